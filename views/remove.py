"""Remove SE blocks: choose blocks, a stage or the last k; remove them (gate = 1) or freeze them (mean gate),
and see top-1, top-5, agreement, parameters and GMACs before and after; sweep every choice at once."""

import streamlit as st

from senet_viz import paper, plots, zoo
from senet_viz.blocks import select_blocks
from ui import state
from ui.common import need_model_and_images

st.header("Remove SE blocks")
selection = need_model_and_images()
model, images = selection.model, selection.scored_images()
if not selection.labels_in_model_space:
    st.info("Your classes are not the model's classes, so top-1/top-5 cannot be scored: agreement with the full "
            "network and KL divergence measure the effect instead. Name classes after model classes to score them.")

c1, c2, c3 = st.columns([2, 3, 2])
how = c1.radio("Choose", ["Last k blocks", "Stage", "Blocks"], key="remove_how")
if how == "Last k blocks":
    k = c2.slider("k", 1, len(model.blocks), 1, key="remove_k")
    blocks = select_blocks(model.blocks, f"last:{k}")
elif how == "Stage":
    stage = c2.selectbox("Stage", sorted({b.stage for b in model.blocks}), index=None, key="remove_stage",
                         placeholder="choose a stage")
    blocks = select_blocks(model.blocks, f"stage:{stage}") if stage is not None else []
else:
    names = c2.multiselect("Blocks", [b.name for b in model.blocks], key="remove_blocks")
    blocks = select_blocks(model.blocks, names)
mode = c3.radio("Mode", ["identity", "mean"], key="remove_mode",
                help="identity: gate = 1 (the paper's removal) · mean: gate frozen to its mean over a "
                     "calibration split (20% of the images, not scored)")
enabled = st.toggle(f"Remove {', '.join(b.name for b in blocks) or '…'}", key="remove_on", disabled=not blocks)

full = state.evaluate(model, images, [], "identity")


def pct(v):
    return "n/a" if v is None else f"{v:.1%}"


out = None
if enabled and blocks:
    try:
        out = state.evaluate(model, images, blocks, mode)
    except ValueError as exc:  # e.g. mode "mean" with no readable image in the calibration split
        st.warning(f"Cannot evaluate this removal: {exc} (mode 'mean' fits the gates on 20% of the images).")
if out is not None:
    cols = st.columns(5)
    cols[0].metric("Top-1", pct(out["top1"]), None if out["top1"] is None else
                   f"{(out['top1'] - out['full_top1']) * 100:+.1f} pts vs full {pct(out['full_top1'])}")
    cols[1].metric("Top-5", pct(out["top5"]), None if out["top5"] is None else
                   f"{(out['top5'] - out['full_top5']) * 100:+.1f} pts")
    cols[2].metric("Agreement with full", pct(out["agreement"]), f"KL {out['kl']:.3f} nats", delta_color="off")
    cols[3].metric("Parameters", f"{out['params_after']:,}", f"-{out['params_removed']:,} "
                   f"({out['params_removed'] / out['params']:.2%})", delta_color="inverse")
    cols[4].metric("GMACs", f"{out['gmacs'] - out['gmacs_removed']:.4f}", f"-{out['gmacs_removed']:.6f}",
                   delta_color="inverse")
    st.caption(f"{out['n_images']} images scored" + (f", mean gates fitted on {out['n_calibration']} other images"
                                                     if out["n_calibration"] else "") + f"; full network: top-1 "
               f"{pct(out['full_top1'])}, {out['params']:,} parameters, {out['gmacs']:.4f} GMACs.")
    st.session_state["last_ablation"] = out
else:
    cols = st.columns(4)
    cols[0].metric("Top-1 (full network)", pct(full["top1"]))
    cols[1].metric("Top-5 (full network)", pct(full["top5"]))
    cols[2].metric("Parameters", f"{full['params']:,}")
    cols[3].metric("GMACs", f"{full['gmacs']:.4f}")
    st.caption(f"{full['n_images']} images. Turn on the toggle to remove the chosen SE blocks.")

retrained = {zoo.DEFAULT_MODEL: "se_resnet_fmnist_nose5"}.get(model.name)
if retrained and retrained in zoo.REGISTRY and zoo.weights_status(retrained) == "file":
    st.subheader("Post-hoc removal vs retrained without SE in stage 5")
    other = state.get_model(retrained, None, str(model.device))
    post = state.evaluate(model, images, select_blocks(model.blocks, "stage:5"), "identity")
    again = state.evaluate(other, images, [], "identity")
    st.dataframe([
        {"network": f"{model.name} (full)", "top-1": pct(post["full_top1"]), "parameters": post["params"]},
        {"network": "stage-5 SE removed post hoc (gate = 1)", "top-1": pct(post["top1"]),
         "parameters": post["params_after"]},
        {"network": f"{retrained} (trained without)", "top-1": pct(again["top1"]), "parameters": again["params"]},
    ], hide_index=True)
    st.caption("The paper removed SE blocks and retrained; removing them from a trained network is a different "
               "experiment, shown side by side on the same images.")

st.subheader("Sweep")
s1, s2 = st.columns(2)
modes = s1.multiselect("Modes", ["identity", "mean"], default=["identity", "mean"], key="sweep_modes")
kinds = s2.multiselect("Configurations", ["block", "stage", "last"], default=["block", "stage", "last"],
                       key="sweep_kinds")
if st.button("Run sweep", key="sweep_run", disabled=not (modes and kinds)):
    st.session_state["sweep_request"] = (tuple(modes), tuple(kinds))
request = st.session_state.get("sweep_request")
frame = None
if request:
    try:
        frame = state.sweep(model, images, *request)
    except ValueError as exc:  # e.g. no readable calibration image for mode "mean"
        st.warning(f"Cannot run the sweep: {exc}. Add images or sweep mode identity only.")
if frame is not None:
    st.session_state.setdefault("tables", {})["sweep"] = frame
    if frame["d_top1"].notna().any():
        reference = paper.PAPER_LAST_STAGE_CLAIM if model.name == "legacy_seresnet50" else None
        fig = plots.sweep_figure(frame, reference=reference)
        st.plotly_chart(fig, width="stretch", key="sweep_chart")
        st.session_state.setdefault("figures", {})["Sweep"] = fig
    st.dataframe(frame[["config", "mode", "top1", "d_top1", "agreement", "kl", "params_removed",
                        "params_saved_pct", "gmacs_removed"]], hide_index=True)
