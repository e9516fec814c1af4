"""Attribution: Grad-CAM at a chosen stage with and without the chosen SE blocks removed, and how much each SE
channel's gate contributes to the predicted class."""

import numpy as np
import streamlit as st

from senet_viz import plots
from senet_viz.analysis.attribution import gradcam_unavailable
from senet_viz.gates.blocks import select_blocks
from ui import exports
from ui.charts import plotly_chart
from ui.common import need_analysis, pick_image
from ui.results import channel_attribution, gradcams
from ui.widgets import kept, per_model

st.header("Attribution")
selection, analysis = need_analysis()
model, result = selection.model, analysis.result
items, key = pick_image(selection, analysis, "attr_image")
c1, c2, c3 = st.columns(3)
stages = sorted({b.stage for b in model.blocks})
stage = c1.selectbox("Grad-CAM stage", stages, index=len(stages) - 1, key=per_model("attr_stage", model.name))
k = c2.slider("Remove the last k SE blocks", 1, len(model.blocks), 1, key=per_model("attr_k", model.name))
mode = c3.radio("Mode", ["identity"], key=kept("attr_mode"), help="identity: gate = 1 (the paper's removal)")
removed = select_blocks(model.blocks, f"last:{k}")

image = items[key].load()
pixels = model.transform(image)
unavailable = gradcam_unavailable(model)
if unavailable:
    st.info(unavailable)
else:
    cams, target = gradcams(model, key, pixels, int(stage), removed)
    display = np.asarray(image.resize((pixels.shape[-1], pixels.shape[-2])))
    label = model.class_names[target]
    fig = plots.gradcam_figure(display, cams, f"Grad-CAM — {model.name}: stage {stage}, class '{label}' "
                                              f"(image {items[key].name})")
    plotly_chart(fig, width="stretch", key="attr_gradcam")
    exports.keep_figure("Grad-CAM", fig)

st.subheader("Which SE channels carry the predicted class?")
block_name = st.selectbox("SE block", [b.name for b in model.blocks], index=len(model.blocks) - 1,
                          key=per_model("attr_block", model.name))
block = next(b for b in model.blocks if b.name == block_name)
attribution, gates, target = channel_attribution(model, key, pixels, block)
fig2 = plots.channel_attribution_figure(attribution, gates, model.name, block.name, model.class_names[target])
plotly_chart(fig2, width="stretch", key="attr_channels")
exports.keep_figure("SE channel attribution", fig2)
