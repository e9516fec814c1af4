"""Explore one image: its top-5, its gates block by block, and where they sit in its class's distribution."""

import pandas as pd
import streamlit as st

from senet_viz import plots
from ui import exports, state
from ui.common import need_analysis, per_model, pick_image

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
group = group if group in set(analysis.channels["class"]) else "all"
blocks = list(analysis.indices["block"])
summary = pd.DataFrame({"block": blocks, "mean gate (this image)": [float(gates[b].mean()) for b in blocks],
                        f"mean gate ({group})": [float(analysis.channels[(analysis.channels["block"] == b)
                                                 & (analysis.channels["class"] == group)]["mean"].mean())
                                                 for b in blocks]})
st.markdown("**Gates block by block**")
st.dataframe(summary, hide_index=True)
block = st.selectbox("Block", blocks, index=len(blocks) - 1, key=per_model("explore_block", selection.model.name))
sizes = analysis.channels.drop_duplicates("class").set_index("class")["count"]
reference = group
if group != "all" and int(sizes[group]) == 1:
    # A one-image class has no distribution to rank the image in: rank it among all images instead.
    reference = "all"
    st.info(f"Class '{group}' holds only this image, so percentiles within the class cannot be computed. The chart "
            f"places the image among all {int(sizes['all'])} images instead; add images of '{group}' to rank it "
            f"within its class.")
fig = plots.image_percentiles(analysis.channels, block, reference, gates[block], items[key].name)
st.plotly_chart(fig, width="stretch", key="explore_chart")
st.caption(f"Percentile of each channel's gate within the gates of "
           f"{'class ' if reference != 'all' else ''}'{reference}' ({int(sizes[reference])} images).")
exports.keep_figure("Explore", fig)
