"""Compare classes: the gates of two or more classes side by side, for a block or a stage."""

import streamlit as st

from senet_viz import plots
from ui import exports
from ui.common import class_caption, need_analysis

st.header("Compare classes")
selection, analysis = need_analysis()
channels, indices = analysis.channels, analysis.indices
st.caption(class_caption(analysis))

classes = [c for c in channels["class"].unique() if c != "all"]
blocks = list(indices["block"])
stages = sorted(indices["stage"].unique())

left, right = st.columns([3, 2])
if "compare_classes" not in st.session_state or st.session_state.get("_compare_classes_present") != classes:
    st.session_state["compare_classes"] = classes[:6]  # first visit, or other images/classes: the default
st.session_state["_compare_classes_present"] = classes
chosen = left.multiselect("Classes to compare", classes, key="compare_classes")
preset = right.radio("View", ["Paper Fig. 6 (preset blocks)", "Paper Fig. 7 (one class, ±1 std)",
                              "Per-stage distributions", "Class × channel heatmap"], key="compare_view")
if not chosen:
    st.warning("Choose at least one class.")
    st.stop()
if len(chosen) < 2 and not preset.startswith("Paper Fig. 7"):
    st.info("One class chosen: add a second to compare side by side.")

if preset.startswith("Paper Fig. 6"):
    c1, c2, c3 = st.columns(3)
    all_channels = c1.toggle("All channels", key="fig6_all")
    n_channels = c2.number_input("Channels sampled", 5, 500, 50, key="fig6_n", disabled=all_channels)
    seed = c3.number_input("Seed", 0, 10_000, 0, key="fig6_seed")
    fig_blocks = st.multiselect("Blocks (default: the paper's preset — last block of each stage and every block "
                                "of the last stage)", blocks, default=plots.paper_preset_blocks(indices),
                                key="fig6_blocks")
    fig = plots.fig6(channels, blocks=fig_blocks or None, classes=chosen, n_channels=int(n_channels),
                     seed=int(seed), all_channels=all_channels)
elif preset.startswith("Paper Fig. 7"):
    c1, c2 = st.columns(2)
    block = c1.selectbox("Block", blocks, index=len(blocks) - 1, key="fig7_block")
    cls = c2.selectbox("Class", chosen, key="fig7_class")
    fig = plots.fig7(channels, block, cls)
elif preset.startswith("Per-stage"):
    c1, c2 = st.columns(2)
    stage = c1.selectbox("Stage", stages, index=len(stages) - 1, key="dist_stage")
    kind = c2.radio("Kind", ["box", "violin"], horizontal=True, key="dist_kind")
    fig = plots.distributions(channels, stage=int(stage), classes=chosen, kind=kind)
else:
    block = st.selectbox("Block", blocks, index=len(blocks) - 1, key="heat_block")
    fig = plots.heatmap(channels, block, classes=chosen)

st.plotly_chart(fig, width="stretch", key="compare_chart")
exports.keep_figure("Compare classes", fig)

with st.expander("Indices per block (class specificity, saturation)"):
    st.dataframe(indices[["block", "stage", "channels", "n_images", "n_classes", "specificity", "specificity_method",
                          "saturation", "mean_gate", "cross_class_corr"]], hide_index=True)
    st.caption("Specificity: share of gate variance explained by class (eta², or the spread fallback with one "
               "image per class). Saturation: share of channels with mean gate ≥ 0.9. The paper found early "
               "blocks class-agnostic and stage-5 gates saturated near 1.")
