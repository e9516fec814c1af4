"""Remove SE blocks: choose blocks, a stage or the last k; remove them (gate = 1) or freeze them (mean gate),
and see top-1, top-5, agreement, parameters and GMACs before and after; sweep every choice at once."""

import streamlit as st

from senet_viz import plots
from senet_viz.analysis import paper
from senet_viz.analysis.ablation import AblationResult
from senet_viz.gates.blocks import select_blocks
from senet_viz.inference.run import Cancelled
from senet_viz.models.download import WeightsStatus, weights_status
from senet_viz.models.registry import REGISTRY
from ui import exports
from ui.charts import plotly_chart
from ui.common import need_model_and_images
from ui.keys import images_key, model_key
from ui.memo import derived
from ui.model_cache import get_model
from ui.results import cancel_sweep, evaluate, sweep
from ui.slim import slim_section
from ui.sweeps import SweepPlan, replay_summary
from ui.text import plain
from ui.widgets import kept, per_model

st.header("Remove SE blocks")
selection = need_model_and_images()
model, images = selection.model, selection.scored_images()
explanation = st.container()  # filled once the full network has run: it says how many images are scored

# Settings outlive the page (ui.widgets.kept); k is clamped to this model's number of blocks.
block_names = [b.name for b in model.blocks]
stage_names = sorted({b.stage for b in model.blocks})
if st.session_state.get("remove_k", 1) > len(model.blocks):
    st.session_state["remove_k"] = len(model.blocks)

c1, c2, c3 = st.columns([2, 3, 2])
how = c1.radio("Choose", ["Last k blocks", "Stage", "Blocks"], key=kept("remove_how"))
if how == "Last k blocks":
    k = c2.slider("k", 1, len(model.blocks), 1, key=kept("remove_k"))
    blocks = select_blocks(model.blocks, f"last:{k}")
elif how == "Stage":
    stage = c2.selectbox("Stage", stage_names, index=None, key=per_model("remove_stage", model.name),
                         placeholder="choose a stage")
    blocks = select_blocks(model.blocks, f"stage:{stage}") if stage is not None else []
else:
    names = c2.multiselect("Blocks", block_names, key=per_model("remove_blocks", model.name))
    blocks = select_blocks(model.blocks, names)
mode = c3.radio("Mode", ["identity", "mean"], key=kept("remove_mode"),
                help="identity: gate = 1 (the paper's removal) · mean: gate frozen to its mean over a "
                     "calibration split (20% of the images, not scored)")
enabled = st.toggle(f"Remove {', '.join(b.name for b in blocks) or '…'}", key=kept("remove_on"), disabled=not blocks)

full = evaluate(model, images, [], "identity")  # an AblationResult with nothing ablated
if full.n_scored == 0:
    explanation.info("No image carries one of the model's classes, so top-1/top-5 cannot be scored: agreement with "
                     "the full network and KL divergence measure the effect instead. Name a class after a model class "
                     "(or a wnid), or use ImageNet-style file names (n01443537_goldfish.JPEG), to score accuracy.")
elif full.n_scored < full.n_images:
    explanation.caption(f"Top-1/top-5 are scored on the {full.n_scored} of {full.n_images} images whose class "
                        "or file name is a model class; agreement and KL use every image.")


def pct(v):
    return "n/a" if v is None else f"{v:.1%}"


def points(now, before) -> tuple[str | None, str]:
    """A metric delta in percentage points, coloured only when it is a visible change."""
    if now is None or before is None:
        return None, "off"
    change = (now - before) * 100
    return f"{change:+.1f} pts vs full {pct(before)}", "normal" if abs(change) >= 0.05 else "off"


def scored_caption(out: AblationResult) -> str:
    scored = f"{out.n_scored} of them scored for top-1" if out.n_scored < out.n_images else "all scored"
    text = f"{out.n_images} images evaluated ({scored})"
    if out.n_calibration:
        text += (f"; the mean gates were fitted on the other {out.n_calibration} images (the calibration split: "
                 "an image is in it when sha1(key) mod 1000 < 200), which are never scored, so the full network's "
                 f"top-1 here ({pct(out.full_top1)}) is over fewer images than with identity "
                 f"({pct(full.full_top1)} on {full.n_scored} scored images)")
    return text + "."


out = None
if enabled and blocks:
    try:
        out = evaluate(model, images, blocks, mode)
    except ValueError as exc:  # e.g. mode "mean" with no readable image in the calibration split
        st.warning(f"Cannot evaluate this removal: {plain(str(exc), None)} (mode 'mean' fits the gates on 20% of "
                   "the images).")
if out is not None:
    cols = st.columns(6)
    delta, color = points(out.top1, out.full_top1)
    cols[0].metric("Top-1", pct(out.top1), delta, delta_color=color)
    delta, color = points(out.top5, out.full_top5)
    cols[1].metric("Top-5", pct(out.top5), delta, delta_color=color)
    cols[2].metric("Agreement with full", pct(out.agreement),
                   help="share of images whose top-1 class is the full network's")
    cols[3].metric("KL(full ‖ ablated)", "n/a" if out.kl is None else f"{out.kl:.3f} nats",
                   help="mean KL divergence of the ablated network's class probabilities from the full network's")
    cols[4].metric("Parameters", f"{out.params_after:,}", f"-{out.params_removed:,} "
                   f"({out.params_removed / out.params:.2%})", delta_color="off")
    cols[5].metric("GMACs", f"{out.macs_after / 1e9:.4f}", f"-{plots.format_macs(out.macs_removed)}",
                   delta_color="off", help="multiply-accumulates for one image, after the removal")
    st.caption(scored_caption(out) + f" Full network: top-1 {pct(out.full_top1)}, {out.params:,} parameters, "
               f"{out.macs / 1e9:.4f} GMACs.")
    if getattr(out, "replay", ""):  # how the ablated pass ran: the tail from a cut, or the whole network and why
        st.caption(f"Computed as: {plain(out.replay, None)}.")
    st.session_state["last_ablation"] = out
    slim_section(model, images, blocks, mode)  # the network without these blocks, as a download (ui.slim)
else:
    cols = st.columns(4)
    cols[0].metric("Top-1 (full network)", pct(full.top1))
    cols[1].metric("Top-5 (full network)", pct(full.top5))
    cols[2].metric("Parameters", f"{full.params:,}")
    cols[3].metric("GMACs", f"{full.macs / 1e9:.4f}")
    st.caption(scored_caption(full) + " Turn on the toggle to remove the chosen SE blocks.")

twin = model.spec.retrained_twin if model.spec else None
retrained = twin.name if twin else None
if twin and twin.name in REGISTRY and weights_status(twin.name) is WeightsStatus.FILE:
    st.subheader(f"Post-hoc removal vs retrained without {twin.description}")
    other = get_model(twin.name, None, str(model.device))
    post = evaluate(model, images, select_blocks(model.blocks, twin.without), "identity")
    again = evaluate(other, images, [], "identity")
    st.dataframe([
        {"network": f"{model.name} (full)", "top-1": pct(post["full_top1"]), "parameters": post["params"]},
        {"network": f"{twin.description} removed post hoc (gate = 1)", "top-1": pct(post["top1"]),
         "parameters": post["params_after"]},
        {"network": f"{retrained} (trained without)", "top-1": pct(again["top1"]), "parameters": again["params"]},
    ], hide_index=True)
    st.caption("The paper removed SE blocks and retrained; removing them from a trained network is a different "
               "experiment, shown side by side on the same images.")

st.subheader("Sweep")
st.caption("Every single block, every stage and the last k blocks, in each mode. It runs only when you press the "
           "button, for the model and images selected then. With mode mean among the modes, every row is scored on "
           "the images outside the calibration split, so its full-network top-1 differs from the numbers above.")
s1, s2 = st.columns(2)
modes = s1.multiselect("Modes", ["identity", "mean"], default=["identity", "mean"], key=kept("sweep_modes"))
kinds = s2.multiselect("Configurations", ["block", "stage", "last"], default=["block", "stage", "last"],
                       key=kept("sweep_kinds"))
request_for = (*model_key(model), images_key(images))
request = st.session_state.get("sweep_request")
pending = bool(request and request["for"] == request_for and "sweep_result" not in st.session_state)
b1, b2 = st.columns([1, 5])
if b1.button("Run sweep", key="sweep_run", type="primary", disabled=pending or not (modes and kinds)):
    request = st.session_state["sweep_request"] = {"for": request_for, "modes": tuple(modes), "kinds": tuple(kinds)}
    st.session_state.pop("sweep_result", None)
    st.session_state.pop("sweep_stopped", None)
    st.rerun()  # drawn again with Run sweep disabled and Cancel beside it while the sweep runs
# While a sweep runs, any click reruns this page: a pending request is asked for again and joins the computation
# still under way (ui.memo.shared), so only Cancel (or a finished sweep) ends it.
if pending and b2.button("Cancel", key="sweep_cancel", icon=":material/cancel:",
                         help="stop the sweep after its current batch; nothing else is lost"):
    st.session_state.pop("sweep_request", None)
    st.session_state["sweep_stopped"] = (
        "cancelled" if cancel_sweep(model, images, request["modes"], request["kinds"]) else "shared")
    st.rerun()  # drawn again with Run sweep enabled and without Cancel
elif pending:
    plan = SweepPlan.of(model.blocks, images, request["modes"], request["kinds"])
    try:
        frame = sweep(model, images, request["modes"], request["kinds"], describe=plan.text)
        st.session_state["sweep_result"] = {"for": request_for, "frame": frame}
        st.session_state.pop("sweep_request", None)
        st.rerun()  # drawn again without the Cancel button
    except Cancelled:  # cancelled from another tab of this session while this one waited
        st.session_state.pop("sweep_request", None)
        st.session_state["sweep_stopped"] = "cancelled"
    except ValueError as exc:  # e.g. no readable calibration image for mode "mean"
        st.session_state.pop("sweep_request", None)
        st.warning(f"Cannot run the sweep: {plain(str(exc), None)}. Add images or sweep mode identity only.")
    except Exception:
        st.session_state.pop("sweep_request", None)  # a request runs once: an error is not retried on each click
        raise
stopped = st.session_state.get("sweep_stopped")
if stopped == "cancelled":
    st.info("Sweep cancelled: its computation stopped after the batch it was on, and nothing else was lost. Press "
            "Run sweep to start it again.", icon=":material/cancel:")
elif stopped == "shared":
    st.info("You stopped waiting for this sweep; another session is computing the same sweep, so it goes on for "
            "them, and Run sweep shows its result once it is ready.", icon=":material/group:")
done = st.session_state.get("sweep_result")
if done and done["for"] != request_for:
    st.info("The last sweep was run for another model or other images; press Run sweep to sweep this selection.")
elif done:
    frame = done["frame"]
    exports.keep_table("sweep", frame)
    reference = paper.PAPER_LAST_STAGE_CLAIM if model.spec and model.spec.paper_reference else None
    fig = derived(frame, ("sweep", reference is not None), lambda: plots.sweep_figure(frame, reference=reference))
    plotly_chart(fig, width="stretch", key="sweep_chart")
    exports.keep_figure("Sweep", fig)
    first = frame.iloc[0]
    st.caption(f"{int(first['n_images'])} images scored"
               + (f" ({int(first['n_scored'])} with a model class for top-1)" if first["n_scored"] < first["n_images"]
                  else "")
               + (f"; mean gates fitted on {int(first['n_calibration'])} other images (calibration split, not "
                  "scored)" if first["n_calibration"] else "") + ".")
    if "replay" in frame:
        st.caption("Computed: " + plain(replay_summary(list(frame["replay"])), None))
    columns = ["config", "mode", "top1", "d_top1", "agreement", "kl", "params_removed", "params_saved_pct",
               "gmacs_removed"] + (["replay"] if "replay" in frame else [])
    st.dataframe(frame[columns], hide_index=True)
