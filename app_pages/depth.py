"""Depth: class specificity and saturation against depth, optionally with a second model on the same chart."""

import streamlit as st

from senet_viz import plots
from senet_viz.analysis import verdict
from senet_viz.analysis.chance import CIRCULAR_NOTE
from senet_viz.models.download import weights_status
from senet_viz.models.registry import REGISTRY
from senet_viz.models.weights import WeightsError
from senet_viz.plots.depth import chance_caption, chance_index_table
from ui import analysis_files, exports
from ui.bundles import bundle_analysis
from ui.charts import plotly_chart
from ui.common import class_caption, need_analysis
from ui.model_cache import get_model
from ui.results import analyse
from ui.text import plain
from ui.widgets import kept


def claim_words(claim: verdict.Claim) -> str:
    """The status in words: "shown", "not shown" or "cannot tell, because <the reason>", then what was measured."""
    if claim.status != "cannot tell":
        return f"{claim.status} ({claim.detail})"
    head, _, why = claim.detail.partition("cannot tell: ")
    return f"cannot tell, because {why or head}" + (f" ({head.rstrip('; ')})" if why and head else "")


st.header("Depth profile")
selection, analysis = need_analysis(bundle_ok=True)  # works from an analysis file too
st.caption(class_caption(analysis))
if analysis.circular:
    st.warning(CIRCULAR_NOTE)
judged = verdict.paper_verdict(analysis.indices, chance=analysis.chance)
for note in judged.notes:
    st.warning(note)
metrics = st.multiselect("Indices", ["specificity", "spread", "saturation", "mean_gate", "mean_abs_1_minus_s",
                                     "share_near_0", "cross_class_corr"],
                         default=["specificity", "spread", "saturation"], key=kept("depth_metrics"),
                         help="specificity = eta² (share of gate variance explained by class; scale-free), spread = "
                              "std of the class-mean gates relative to the largest possible (absolute)")
second = None
if selection.bundle is None:
    others = [n for n in REGISTRY if n != selection.model.name and weights_status(n).ready]
    second_name = st.selectbox("Second model on the same images (optional)", ["—", *others], key=kept("depth_second"))
    if second_name != "—":
        try:
            other = get_model(second_name, None, str(selection.model.device))
            second = analyse(other, selection.images, selection.group_by_prediction)
        except (WeightsError, ValueError, KeyError) as exc:
            st.error(f"Could not run {second_name}: {exc}")
else:  # an analysis file: overlay another opened analysis file (e.g. another model over the same images)
    opened = analysis_files.opened_bundles()
    others = {k: b for k, b in opened.items() if b is not selection.bundle}
    second_key = st.selectbox("Second analysis file on the same chart (optional)", ["—", *others],
                              format_func=lambda k: "—" if k == "—" else others[k].label,
                              key=kept("depth_second_bundle"),
                              help="open more analysis files in the sidebar to list them here")
    if second_key != "—":
        second = bundle_analysis(others[second_key])
if metrics:
    fig = plots.depth_profile(analysis.indices, second=None if second is None else second.indices,
                              metrics=tuple(metrics), chance=analysis.chance)
    plotly_chart(fig, width="stretch", key="depth_chart")
    exports.keep_figure("Depth", fig)
    st.caption(chance_caption(analysis.chance) or "Chance unknown: this analysis file holds no chance table.")
    if analysis.chance_note:
        st.info(analysis.chance_note)
else:
    st.warning("Choose at least one index.")

st.subheader("Against the paper")
st.markdown(f"**Verdict:** {plain(judged.summary, None)}")
st.markdown("\n".join(f"- **{plain(c.paper, None)}**: {plain(claim_words(c), None)}" for c in judged.claims))
st.dataframe(judged.table(), hide_index=True, key="depth_verdict")
if judged.inert:
    st.info(judged.inert_markdown)
if second is not None:
    st.markdown(f"**Second model:** "
                f"{plain(verdict.paper_verdict(second.indices, chance=second.chance).summary, None)}")
with st.expander("How to read this"):
    st.markdown(judged.how_to_read)
st.markdown("**Indices per block beside chance**")
st.dataframe(chance_index_table(analysis.indices, analysis.chance), hide_index=True, key="depth_chance")
with st.expander("Every index per block"):
    st.dataframe(analysis.indices, hide_index=True)
