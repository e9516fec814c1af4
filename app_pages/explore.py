"""Explore one image: its top-5, its gates block by block, and where they sit in its class's distribution."""

import streamlit as st

from senet_viz import plots
from senet_viz.analysis.stats_accumulate import MAX_DETAIL_CLASSES
from ui import exports
from ui.charts import plotly_chart
from ui.common import need_analysis, pick_image
from ui.results import single_image_gates
from ui.text import plain
from ui.widgets import per_model

st.header("Explore one image")
selection, analysis = need_analysis()
result, model = analysis.result, selection.model
items, key = pick_image(selection, analysis, "explore_image")
left, right = st.columns([1, 2])
with left:
    try:
        left.image(items[key].load(), caption=items[key].name, width="stretch")
    except ValueError as exc:
        left.warning(f"Cannot show this image: {exc}")
with right:
    top5 = result.top5_frame(key, model.class_names)
    right.markdown(f"**Top-5** of {model.name} · label: **{items[key].label_name or 'none'}**")
    right.dataframe(top5, hide_index=True, column_config={
        "probability": st.column_config.ProgressColumn("probability", min_value=0.0, max_value=1.0, format="%.3f")})

gates = single_image_gates(model, selection.images, analysis, key)
stats = analysis.stats
# The image's group: its predicted class or its label, as the analysis groups images ("all" when not a class here).
own = analysis.class_names[int(result.pred[result.keys.index(key)])] if analysis.grouping == "predicted class" \
    else items[key].label_name
place = stats.place_image(own)
blocks = list(analysis.indices["block"])
st.markdown("**Gates block by block**")
st.dataframe(stats.image_vs_class(gates, place.group, blocks), hide_index=True)
block = st.selectbox("Block", blocks, index=len(blocks) - 1, key=per_model("explore_block", selection.model.name))
group, reference, within = place.group, place.reference, place.within
if place.single:
    # A one-image class has no distribution to rank the image in: rank it among all images instead.
    shown = plain(group)
    st.info(f"Class '{shown}' holds only this image, so percentiles within the class cannot be computed. The chart "
            f"places the image among all {place.counts['all']} images instead; add images of '{shown}' to rank it "
            f"within its class.")
if within != reference:
    # Large runs keep per-channel histograms for a bounded set of classes only (means and std for all).
    st.info(f"Per-channel histograms are not kept for class '{plain(reference)}' ({len(place.counts) - 1} classes: "
            f"they are kept for at most {MAX_DETAIL_CLASSES}), so the chart ranks the image among all "
            f"{place.counts['all']} images.")
classes = list(place.counts)
fig = plots.image_percentiles(stats.frame([block], [reference]), block, reference, gates[block], items[key].name,
                              all_classes=classes)
plotly_chart(fig, width="stretch", key="explore_chart")
st.caption(f"Percentile of each channel's gate within the gates of "
           f"{'class ' if within != 'all' else ''}'{plain(within)}' ({place.counts[within]} images).")
exports.keep_figure("Explore", fig)
