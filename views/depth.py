"""Depth: class specificity and saturation against depth, optionally with a second model on the same chart."""

import streamlit as st

from senet_viz import plots, zoo
from senet_viz.weights import WeightsError
from ui import exports, state
from ui.common import class_caption, need_analysis

st.header("Depth profile")
selection, analysis = need_analysis()
st.caption(class_caption(analysis))
metrics = st.multiselect("Indices", ["specificity", "spread", "saturation", "mean_gate", "mean_abs_1_minus_s",
                                     "share_near_0", "cross_class_corr"],
                         default=["specificity", "spread", "saturation"], key="depth_metrics",
                         help="specificity = eta² (share of gate variance explained by class; scale-free), spread = "
                              "std of the class-mean gates relative to the largest possible (absolute)")
others = [n for n in zoo.REGISTRY if n != selection.model.name and zoo.weights_status(n) != "hub (online only)"]
second_name = st.selectbox("Second model on the same images (optional)", ["—", *others], key="depth_second")
second = None
if second_name != "—":
    try:
        other = state.get_model(second_name, None, str(selection.model.device))
        second = state.analyse(other, selection.images, selection.group_by_prediction).indices
    except (WeightsError, ValueError, KeyError) as exc:
        st.error(f"Could not run {second_name}: {exc}")
if not metrics:
    st.warning("Choose at least one index.")
    st.stop()
fig = plots.depth_profile(analysis.indices, second=second, metrics=tuple(metrics))
st.plotly_chart(fig, width="stretch", key="depth_chart")
exports.keep_figure("Depth", fig)

idx = analysis.indices
early, late = idx.iloc[0], idx.iloc[-1]
# The paper's "class-agnostic" is about how far apart the class curves are: judged on the absolute spread.
verdict_early = "class-agnostic" if early["spread"] < 0.05 else "already class-specific"
verdict_late = "saturated near 1" if late["saturation"] >= 0.5 else "not saturated"
st.markdown(
    f"**Against the paper** (early blocks class-agnostic, stage-5 gates saturated near 1): the first block "
    f"{early['block']} has class-mean spread {early['spread']:.3f} and eta² {early['eta2']:.3f} ({verdict_early}); "
    f"the last block "
    f"{late['block']} has {late['saturation']:.0%} of channels with mean gate ≥ {late['threshold']} and mean gate "
    f"{late['mean_gate']:.3f} ({verdict_late}).")
st.dataframe(idx, hide_index=True)
