"""Cost: parameters and GMACs per SE block and stage, the SE share, the paper's numbers beside ours, and measured
time with and without SE (on a button press)."""

import pandas as pd
import streamlit as st

from senet_viz import plots
from senet_viz.analysis import paper
from ui import exports
from ui.charts import plotly_chart
from ui.common import need_model_and_images
from ui.latency import latency_section
from ui.results import cost, paper_cost_table

st.header("Cost")
selection = need_model_and_images()
model = selection.model
report = cost(model)
c = st.columns(4)
c[0].metric("Parameters", f"{report.params:,}")
c[1].metric("GMACs (one image)", f"{report.macs / 1e9:.4f}")
c[2].metric("SE parameters", f"{report.se_params:,}", f"{report.se_params / report.params:.2%} of the network",
            delta_color="off")
c[3].metric("SE MACs (one image)", plots.format_macs(report.se_macs),
            f"{report.se_macs / report.macs:.3%} of the network", delta_color="off")
st.caption(f"Counted with torch's FlopCounterMode at {model.input_size[-1]}×{model.input_size[-1]}: "
           "convolutions and matrix products, in multiply-accumulates (1 MAC = 2 FLOPs); element-wise work "
           "(pooling, the sigmoid, the channel-wise multiply) is not counted.")
fig = plots.cost_figure(report.blocks, model.name, report.params)
plotly_chart(fig, width="stretch", key="cost_chart")
exports.keep_figure("Cost", fig)

st.subheader("Per stage")
stages = report.stages()
st.dataframe(stages, hide_index=True)
exports.keep_table("cost_stages", stages)
exports.keep_table("cost_blocks", report.blocks)

st.subheader("The paper's numbers (SE-ResNet-50, Hu et al. TPAMI 2019)")
measured = paper_cost_table()
st.markdown("**Table 13** — SE blocks in one stage of ResNet-50: the paper's parameters and multiply-adds beside ours "
            "(counted on `legacy_seresnet50` with the other stages' SE blocks removed).")
st.dataframe(measured["table13"], hide_index=True)
t13 = measured["table13"].set_index("variant")
paper_g, ours_g = t13[paper.PAPER_GMACS_COLUMN], t13[paper.OURS_GMACS_COLUMN]
st.caption("Units: the paper's \"GFLOPs\" count multiply-adds (the ResNet convention, He et al. 2016: \"FLOPs "
           "(multiply-adds)\"), so they are GMACs, the unit of our column; in FLOPs proper both would double. "
           f"Without SE blocks the two agree ({paper_g['ResNet-50']:.2f} vs {ours_g['ResNet-50']:.4f}); all SE "
           f"blocks add {paper_g['SE_All'] - paper_g['ResNet-50']:.2f} G in the paper and "
           f"{ours_g['SE_All'] - ours_g['ResNet-50']:.4f} G here, which counts no element-wise work (pooling, "
           "scaling): the paper does not say what its count includes.")
st.markdown("**Table 10** — reduction ratio r: the paper's parameters beside ours (`legacy_seresnet50 --reduction r`).")
st.dataframe(measured["table10"], hide_index=True)
st.caption(f"Paper claim: removing the stage-5 SE blocks saves about "
           f"{paper.PAPER_LAST_STAGE_CLAIM['params_saved_share']:.1%} of SE-ResNet-50's parameters "
           f"({paper.PAPER_LAST_STAGE_CLAIM['note']}).")
exports.keep_table("paper_table13", pd.DataFrame(measured["table13"]))
exports.keep_table("paper_table10", pd.DataFrame(measured["table10"]))

latency_section(model)
