"""The Cost page's measured latency: wall time per image with and without SE (:mod:`senet_viz.analysis.latency`),
beside the MAC share and the paper's timings.

Measured only on a button press (it takes seconds to minutes), once per (model, weights, device, removed set,
settings, rounds), and shared by every session like the other results (:func:`ui.memo.shared`); the timings run on a
worker thread while other sessions may use the same cores, which the page says.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st
import torch

from senet_viz.analysis.latency import (
    HOOK_NOTE,
    LatencyReport,
    cpu_count,
    last_stage,
    latency_report,
    paper_table2,
    plan_settings,
)
from senet_viz.models.loaded import LoadedModel
from ui import exports
from ui.keys import model_key
from ui.memo import Task, counted_wait, shared
from ui.text import plain
from ui.widgets import kept, per_model

VARIANT_NAMES = {"full": "full network", "hooked_all": "all SE gates hooked to 1", "slim_all": "no SE modules",
                 "hooked_removed": "removed set hooked to 1", "slim_removed": "slim export (removed set gone)"}


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The report's table as the page shows it: readable names, times in ms, shares in percent."""
    out = pd.DataFrame({
        "setting": table["setting"],
        "network": table["variant"].map(VARIANT_NAMES).fillna(table["variant"]),
        "ms / image (median)": table["ms_per_image"].round(3),
        "IQR (ms)": table["iqr_ms"].round(3),
        "× full": table["time_vs_full"].round(3),
        "time saved (%)": (100 * table["time_saved_share"]).round(2),
        "MACs saved (%)": (100 * table["mac_saved_share"]).round(3),
        "time share / MAC share": table["time_share_per_mac_share"].round(1),
    })
    return out


def _describe(done: int, total: int) -> str:
    return f"Timing the networks: round {done} of {total}" if total else "Preparing the networks ..."


def latency_section(loaded: LoadedModel) -> None:
    """Choices, a Measure button, and the measured table beside the paper's timings."""
    st.subheader("Measured time with and without SE")
    st.caption("MACs are a poor proxy for SE: its pooling, small matrix products and channel-wise scaling are "
               "memory- and launch-bound. Here the full network, networks **without** the SE modules (the slim "
               "export) and hook-ablated networks are timed with torch.utils.benchmark: warmed up, interleaved "
               "rounds, median and interquartile range of the time per image. " + HOOK_NOTE[:1].upper() + HOOK_NOTE[1:]
               + ".")
    last = max((b.stage for b in loaded.blocks), default="")
    names = [b.name for b in loaded.blocks]
    default = [b.name for b in last_stage(loaded.blocks)]
    c = st.columns([3, 1, 1, 1])
    removed_names = c[0].multiselect("Removed set (the slim export's)", names, default=default,
                                     key=per_model("latency_removed", loaded.name),
                                     help=f"default: the last stage's blocks (stage {last})")
    cores = cpu_count()
    threads = c[1].multiselect("CPU threads", sorted({1, cores}), default=sorted({1, cores}),
                               key=kept("latency_threads"))
    batches = c[2].multiselect("Batch sizes", [1, 8, 32], default=[1, 32], key=kept("latency_batches"))
    rounds = c[3].number_input("Rounds", 3, 25, 5, key=kept("latency_rounds"))
    cuda = loaded.device.type == "cuda" or torch.cuda.is_available()
    if not threads or not batches:
        st.info("Choose at least one thread count and one batch size.")
        return
    settings = plan_settings(threads=threads, batches=sorted(batches), cuda=cuda)
    removed = [b for b in loaded.blocks if b.name in set(removed_names)]
    key = (*model_key(loaded), tuple(b.name for b in removed), tuple(settings), int(rounds))
    where = "the CPU" + (" and the GPU (batch 1 and 256, fp32 and bf16)" if cuda else "")
    if st.button(f"Measure on {where}", key="latency_measure",
                 help="Takes seconds for a small network, a few minutes for a ResNet-50 at batch 32"):
        st.session_state["latency_request"] = key
    if st.session_state.get("latency_request") != key:
        st.caption("Press the button to measure (once per model and choice; shared by every session).")
        _paper()
        return

    def compute(task: Task) -> LatencyReport:  # copies of the shared model: no replica held for minutes
        return latency_report(loaded, removed, settings=settings, rounds=int(rounds), progress=task.progress)

    try:
        report = shared("latency", key, compute, counted_wait(_describe))
    except ValueError as exc:
        st.warning(f"Cannot measure: {plain(str(exc), None)}")
        return
    table = display_table(report.table)
    st.dataframe(table, hide_index=True)
    exports.keep_table("latency", report.table)
    load = report.conditions.get("load_average_before")
    st.caption(f"{report.conditions['cpu_count']} cores; load average {load[0]:.2f} before the measurement "
               f"(other work on the machine, other sessions included, slows and spreads the times); "
               f"{report.conditions['seconds']} s. 'time saved' and 'MACs saved' are shares of the full network's; "
               "their ratio says how many times more of the time SE takes than of the MACs (hook-ablated networks "
               "save no MAC: no ratio)." if load else "")
    for note in report.notes:
        if note != HOOK_NOTE:
            st.caption(plain(note, None))
    _paper()


def _paper() -> None:
    st.markdown("**The paper's timings** (Hu et al., TPAMI 2019): ResNet-50 vs SE-ResNet-50, SE's share of the time "
                "and of the multiply-adds.")
    paper = paper_table2()
    shown = paper.assign(**{"time saved (%)": (100 * paper["time_saved_share"]).round(2),
                            "MACs saved (%)": (100 * paper["mac_saved_share"]).round(2),
                            "time share / MAC share": paper["time_share_per_mac_share"].round(1)}
                         ).drop(columns=["time_saved_share", "mac_saved_share", "time_share_per_mac_share"])
    st.dataframe(shown, hide_index=True)
