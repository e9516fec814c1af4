"""Measured wall time per image with and without SE blocks, beside their MAC share (issue 22, part 2).

MACs are a poor proxy for SE: its global pooling, small matrix products and channel-wise scaling are memory- and
launch-bound, so the share of time SE takes can be many times its share of MACs. :func:`latency_report` times these
variants of a loaded network, each a copy (the loaded, shared model is never run or changed here):

- ``full``: the network as loaded;
- ``hooked_all`` / ``hooked_removed``: every gate / the removed set's gates replaced by 1 with a forward hook
  (:func:`senet_viz.gates.capture.ablate`, what the Remove page measures accuracy with). The SE branch still runs
  and its output is discarded, so these show the hooks' own cost, **not** what removing SE saves;
- ``slim_all`` / ``slim_removed``: networks without the SE modules at all (:func:`senet_viz.analysis.slim.slim_network`
  in identity mode, the slim export): the honest "without SE" and the time the export really saves.

Timing follows ``torch.utils.benchmark``: a ``Timer`` per variant and setting (thread count, batch size, device,
dtype; CUDA timers synchronise the device), every variant warmed up, then ``rounds`` rounds in which each variant runs
one block of ``number`` forwards in turn (the order rotates each round, so that no variant always follows the same
one; ``Timer.timeit`` runs max(number / 100, 2) untimed forwards before each block, so every block starts warm
after the switch); a block lasts about ``block_s`` seconds for the full network, the same ``number`` for every
variant. Reported: the median and interquartile range over rounds of the time per image. The MACs of each variant
are counted on the module that runs (:func:`senet_viz.analysis.cost.count_macs`): a hook-ablated network computes all
of them.

Settings (:func:`plan_settings`): on the CPU 1 thread and all threads, batch 1 and 32 (fp32); on CUDA when present
batch 1 and 256 in fp32 and bf16 (autocast, as the runs of :mod:`senet_viz.inference.precision`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils import benchmark

from senet_viz.analysis.cost import count_macs
from senet_viz.gates.capture import ablate
from senet_viz.gates.kinds import SEBlock
from senet_viz.models.loaded import LoadedModel

CPU_BATCHES = (1, 32)
CUDA_BATCHES = (1, 256)
CUDA_DTYPES = ("fp32", "bf16")
VARIANTS = ("full", "hooked_all", "slim_all", "hooked_removed", "slim_removed")
HOOK_NOTE = ("hook-ablated networks still run every SE branch and discard its output (the hook replaces the gate): "
             "their time is the full network's plus the hooks', not the time without SE; the slim networks have "
             "no SE modules and give that time")


@dataclass(frozen=True)
class Setting:
    """Where and how one measurement runs: ``device`` "cpu" or "cuda", ``threads`` (CPU intra-op threads), ``batch``
    images per forward, ``dtype`` "fp32" or "bf16" (autocast)."""

    device: str
    threads: int
    batch: int
    dtype: str = "fp32"

    @property
    def label(self) -> str:
        where = f"CPU {self.threads} thread{'s' if self.threads != 1 else ''}" if self.device == "cpu" else "CUDA"
        return f"{where}, batch {self.batch}, {self.dtype}"


def cpu_count() -> int:
    """The cores this process may run on (its affinity), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def plan_settings(*, cpu: bool = True, cuda: bool | None = None, threads: Sequence[int] | None = None,
                  batches: Sequence[int] = CPU_BATCHES, cuda_batches: Sequence[int] = CUDA_BATCHES,
                  cuda_dtypes: Sequence[str] = CUDA_DTYPES) -> list[Setting]:
    """The settings to measure: on the CPU (``cpu``) each of ``threads`` (default 1 and every core, once when there
    is one) with each of ``batches``; on CUDA (``cuda``; None: when ``torch.cuda.is_available()``) each of
    ``cuda_batches`` in each of ``cuda_dtypes``."""
    settings = []
    if cpu:
        counts = list(dict.fromkeys(threads or (1, cpu_count())))
        if any(t < 1 for t in counts) or any(b < 1 for b in batches):
            raise ValueError("threads and batch sizes are positive integers")
        settings += [Setting("cpu", t, b) for t in counts for b in batches]
    if cuda is None:
        cuda = torch.cuda.is_available()
    if cuda:
        unknown = [d for d in cuda_dtypes if d not in ("fp32", "bf16")]
        if unknown:
            raise ValueError(f"CUDA dtypes are fp32 and bf16, not {', '.join(unknown)}")
        settings += [Setting("cuda", 1, b, d) for d in cuda_dtypes for b in cuda_batches]
    return settings


@dataclass
class Variant:
    """One network to time: ``model`` (our copy), the gates a hook replaces while it runs (``hooked``), the blocks
    it lacks or ignores (``removed``), and what it computes (``macs``, ``params``)."""

    key: str
    label: str
    model: nn.Module
    removed: list[str]
    hooked: list[SEBlock] = field(default_factory=list)
    macs: int = 0
    params: int = 0

    def context(self) -> contextlib.AbstractContextManager:
        return ablate(self.model, self.hooked) if self.hooked else contextlib.nullcontext()


def last_stage(blocks: Sequence[SEBlock]) -> list[SEBlock]:
    """The default removed set: the SE blocks of the network's last stage (the paper's stage 5 in SE-ResNets)."""
    if not blocks:
        return []
    stage = max(b.stage for b in blocks)
    return [b for b in blocks if b.stage == stage]


def build_variants(loaded: LoadedModel, removed: Sequence[SEBlock], keys: Sequence[str] = VARIANTS
                   ) -> tuple[list[Variant], list[str]]:
    """The :data:`VARIANTS` in ``keys`` for ``loaded`` (copies, on its device) and notes on those left out: the
    removed-set variants without a removed set (or when it is every block), the slim ones where the gates have
    no module to take out (a traced graph's inline gates)."""
    from senet_viz.analysis.slim import slim_network

    notes: list[str] = []
    removed = list(removed)
    names = [b.name for b in removed]
    everything = [b.name for b in loaded.blocks]
    with loaded.lock:  # no other request's hooks on the model while it is copied
        base = copy.deepcopy(loaded.model).eval()
    variants: list[Variant] = []
    for key in keys:
        if key not in VARIANTS:
            raise ValueError(f"unknown latency variant {key!r}; one of {', '.join(VARIANTS)}")
        blocks = list(loaded.blocks) if key.endswith("_all") else removed
        if key.endswith("_removed") and (not removed or names == everything):
            if not removed:
                notes.append(f"{key}: no removed set chosen")
            continue  # removing everything is the *_all variant
        what = "all SE blocks" if key.endswith("_all") else ", ".join(names)
        if key == "full":
            variants.append(Variant("full", "full network", base, []))
        elif key.startswith("hooked"):
            variants.append(Variant(key, f"hook-ablated: {what}", base, [b.name for b in blocks], hooked=blocks))
        else:
            try:
                slim = slim_network(loaded, blocks, mode="identity")
            except ValueError as error:
                notes.append(f"{key}: no slim network ({error})")
                continue
            variants.append(Variant(key, f"without SE modules: {what}", slim.model.eval(), [b.name for b in blocks]))
    return variants, notes


def _runner(model: nn.Module, x: torch.Tensor, dtype: str) -> Callable[[], None]:
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()

    def run() -> None:
        with torch.inference_mode(), autocast:
            model(x)

    return run


def _measure_setting(variants: Sequence[Variant], setting: Setting, input_size: tuple[int, int, int], rounds: int,
                     block_s: float, warmup: int, tick: Callable[[], None]) -> list[dict]:
    device = torch.device(setting.device)
    x = torch.randn((setting.batch, *input_size), generator=torch.Generator().manual_seed(0)).to(device)
    timers, per_call = {}, {}
    for v in variants:
        v.model.to(device)
        run = _runner(v.model, x, setting.dtype)
        timers[v.key] = benchmark.Timer(stmt="run()", globals={"run": run}, num_threads=setting.threads,
                                        label="latency", sub_label=setting.label, description=v.key)
        with v.context():  # warm-up: allocator, kernels, caches; the last call times one forward
            for _ in range(max(warmup, 1)):
                timers[v.key].timeit(1)
            per_call[v.key] = timers[v.key].timeit(1).times[0]
    number = max(1, math.ceil(block_s / max(per_call[variants[0].key], 1e-6)))  # same work for every variant
    samples: dict[str, list[float]] = {v.key: [] for v in variants}
    for r in range(rounds):
        for v in variants[r % len(variants):] + variants[: r % len(variants)]:  # interleaved, rotating
            with v.context():
                samples[v.key].append(timers[v.key].timeit(number).times[0] / setting.batch)
        tick()
    rows = []
    for v in variants:
        values = np.asarray(samples[v.key]) * 1e3
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        rows.append({"setting": setting.label, "device": setting.device, "threads": setting.threads,
                     "batch": setting.batch, "dtype": setting.dtype, "variant": v.key, "label": v.label,
                     "ms_per_image": float(median), "iqr_ms": float(q3 - q1), "q1_ms": float(q1), "q3_ms": float(q3),
                     "rounds": rounds, "forwards_per_round": number})
    return rows


@dataclass
class LatencyReport:
    """What :func:`latency_report` measured: ``table``, one row per setting and variant: time per image (median
    ``ms_per_image``, ``iqr_ms``), its ratio to the full network's (``time_vs_full``), the share of the full network's
    time and MACs the variant saves (``time_saved_share``, ``mac_saved_share``) and their ratio
    (``time_share_per_mac_share``: 1 when SE's time is proportional to its MACs); the ``variants`` (key, label,
    removed blocks, MACs, parameters), and the conditions of the run (load average, cores, torch)."""

    model: str
    input_size: tuple[int, int, int]
    table: pd.DataFrame
    variants: list[dict]
    removed: list[str]
    notes: list[str]
    conditions: dict

    def to_dict(self) -> dict:
        return {"model": self.model, "input_size": list(self.input_size), "removed": self.removed,
                "variants": self.variants, "notes": self.notes, "conditions": self.conditions,
                "table": self.table.to_dict(orient="records"), "paper": paper_table2().to_dict(orient="records")}


def _add_shares(table: pd.DataFrame, variants: Sequence[Variant]) -> pd.DataFrame:
    macs = {v.key: v.macs for v in variants}
    full_macs = macs.get("full", 0)
    full = table[table["variant"] == "full"].set_index("setting")["ms_per_image"]
    table["macs"] = table["variant"].map(macs)
    table["time_vs_full"] = table["ms_per_image"] / table["setting"].map(full)
    table["time_saved_share"] = 1.0 - table["time_vs_full"]
    table["mac_saved_share"] = 1.0 - table["macs"] / full_macs if full_macs else np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = table["time_saved_share"] / table["mac_saved_share"]
    table["time_share_per_mac_share"] = ratio.where(table["mac_saved_share"] > 0)
    return table


def latency_report(loaded: LoadedModel, removed: Sequence[SEBlock] | None = None, *,
                   settings: Sequence[Setting] | None = None, keys: Sequence[str] = VARIANTS, rounds: int = 7,
                   block_s: float = 0.2, warmup: int = 2,
                   progress: Callable[[int, int], None] | None = None) -> LatencyReport:
    """Time :data:`VARIANTS` of ``loaded`` (``removed``: the removed set, default :func:`last_stage`) in each of
    ``settings`` (default :func:`plan_settings`); see the module docstring. ``progress(done, total)`` counts rounds.
    Takes seconds for a small network, minutes for a ResNet-50 at batch 32 on a few cores."""
    if rounds < 1 or block_s <= 0:
        raise ValueError("rounds >= 1 and block_s > 0")
    removed = last_stage(loaded.blocks) if removed is None else list(removed)
    settings = list(plan_settings() if settings is None else settings)
    if not settings:
        raise ValueError("no setting to measure")
    if "full" not in keys:
        keys = ("full", *keys)
    variants, notes = build_variants(loaded, removed, keys)
    size = tuple(loaded.input_size)
    seen: dict[int, tuple[int, int]] = {}
    for v in variants:  # what each module computes (hooks change no MAC), counted once per distinct module
        if id(v.model) not in seen:
            v.model.to("cpu")
            seen[id(v.model)] = (count_macs(v.model, size)[0], sum(p.numel() for p in v.model.parameters()))
        v.macs, v.params = seen[id(v.model)]
    total, done = len(settings) * rounds, 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    rows = []
    started = time.perf_counter()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    for setting in sorted(settings, key=lambda s: s.device != "cpu"):  # CPU first, then the copies move to CUDA
        rows += _measure_setting(variants, setting, size, rounds, block_s, warmup, tick)
    for v in variants:
        v.model.to("cpu")
    if any(v.hooked for v in variants):
        notes.append(HOOK_NOTE)
    conditions = {"torch": torch.__version__, "cpu_count": cpu_count(),
                  "seconds": round(time.perf_counter() - started, 1),
                  "load_average_before": load_before,
                  "load_average_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
                  "cuda": torch.cuda.get_device_name() if any(s.device == "cuda" for s in settings) else None,
                  "rounds": rounds, "block_s": block_s, "warmup": warmup}
    table = _add_shares(pd.DataFrame(rows), variants)
    return LatencyReport(model=loaded.name, input_size=size, table=table,  # type: ignore[arg-type]
                         variants=[{k: v for k, v in asdict(var).items() if k in ("key", "label", "removed", "macs",
                                                                                  "params")} for var in variants],
                         removed=[b.name for b in removed], notes=notes, conditions=conditions)


def paper_table2() -> pd.DataFrame:
    """The SENet paper's timings of ResNet-50 and SE-ResNet-50 (:data:`senet_viz.analysis.paper.PAPER_TIMINGS`) with
    SE's share of the time and of the multiply-adds, and their ratio: the paper's own measure of how far they
    disagree."""
    from senet_viz.analysis.paper import PAPER_TIMINGS

    rows = []
    t = PAPER_TIMINGS
    mac_share = 1 - t["gmacs"]["ResNet-50"] / t["gmacs"]["SE-ResNet-50"]
    for what, column in (("CPU inference, one 224x224 image (ms)", "cpu_ms"),
                         ("GPU forward + backward, mini-batch of 256 on 8 Titan X (ms)", "gpu_train_ms")):
        without, with_se = t[column]["ResNet-50"], t[column]["SE-ResNet-50"]
        share = 1 - without / with_se
        rows.append({"measure": what, "ResNet-50": without, "SE-ResNet-50": with_se, "time_saved_share": share,
                     "mac_saved_share": mac_share, "time_share_per_mac_share": share / mac_share})
    return pd.DataFrame(rows)
