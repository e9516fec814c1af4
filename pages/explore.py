"""Explore one image: its top-5, its gates block by block, and where they sit in its class's distribution."""

import pandas as pd
import streamlit as st

from senet_viz import plots
from senet_viz.stats import MAX_DETAIL_CLASSES
from ui import exports, state
from ui.common import need_analysis, per_model, pick_image
from ui.routing import through_app

through_app()  # before anything is drawn: a fresh server's first request may run this file alone

st.header("Explore one image")
selection, analysis = need_analysis()
result, model = analysis.result, selection.model
items, key = pick_image(selection, analysis, "explore_image")
row = result.keys.index(key)
left, right = st.columns([1, 2])
with left:
    try:
        left.image(items[key].load(), caption=items[key].name, width="stretch")
    except ValueError as exc:
        left.warning(f"Cannot show this image: {exc}")
with right:
    top5 = pd.DataFrame({
        "rank": range(1, result.top5.shape[1] + 1),
        "class": [model.class_names[c] for c in result.top5[row]],
        "probability": result.top5_prob[row],
    })
    right.markdown(f"**Top-5** of {model.name} · label: **{items[key].label_name or 'none'}**")
    right.dataframe(top5, hide_index=True, column_config={
        "probability": st.column_config.ProgressColumn("probability", min_value=0.0, max_value=1.0, format="%.3f")})

gates = state.single_image_gates(model, selection.images, analysis, key)
group = analysis.class_names[int(result.pred[row])] if analysis.grouping == "predicted class" \
    else (items[key].label_name or "all")
stats = analysis.stats
classes = stats.class_table()  # "all" and every class: count, and whether per-channel histograms are kept
group = group if group in set(classes["class"]) else "all"
blocks = list(analysis.indices["block"])
pooled = stats.block_frame(blocks, [group])
pooled = pooled[pooled["class"] == group].set_index("block")["mean"]  # mean over the block's channels
summary = pd.DataFrame({"block": blocks, "mean gate (this image)": [float(gates[b].mean()) for b in blocks],
                        f"mean gate ({group})": [float(pooled[b]) for b in blocks]})
st.markdown("**Gates block by block**")
st.dataframe(summary, hide_index=True)
block = st.selectbox("Block", blocks, index=len(blocks) - 1, key=per_model("explore_block", selection.model.name))
sizes = classes.drop_duplicates("class").set_index("class")["count"]
reference = group
if group != "all" and int(sizes[group]) == 1:
    # A one-image class has no distribution to rank the image in: rank it among all images instead.
    reference = "all"
    st.info(f"Class '{group}' holds only this image, so percentiles within the class cannot be computed. The chart "
            f"places the image among all {int(sizes['all'])} images instead; add images of '{group}' to rank it "
            f"within its class.")
kept = bool(classes.drop_duplicates("class").set_index("class")["detail"][reference])
if not kept:
    # Large runs keep per-channel histograms for a bounded set of classes only (means and std for all).
    st.info(f"Per-channel histograms are not kept for class '{reference}' ({len(classes) - 1} classes: they are kept "
            f"for at most {MAX_DETAIL_CLASSES}), so the chart ranks the image among all {int(sizes['all'])} images.")
fig = plots.image_percentiles(stats.frame([block], [reference]), block, reference, gates[block], items[key].name,
                              all_classes=list(classes["class"]))
st.plotly_chart(fig, width="stretch", key="explore_chart")
within = reference if kept else "all"
st.caption(f"Percentile of each channel's gate within the gates of "
           f"{'class ' if within != 'all' else ''}'{within}' ({int(sizes[within])} images).")
exports.keep_figure("Explore", fig)
