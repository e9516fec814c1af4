"""Compare classes: the gates of two or more classes side by side, for a block or a stage."""

import streamlit as st

from senet_viz import plots
from senet_viz.analysis import paper, verdict
from senet_viz.analysis.chance import CIRCULAR_NOTE
from senet_viz.plots.depth import chance_caption, chance_index_table
from ui import exports
from ui.channels import channel_link
from ui.charts import plotly_chart
from ui.common import class_caption, need_analysis
from ui.memo import derived
from ui.widgets import kept, per_model

st.header("Compare classes")
selection, analysis = need_analysis(bundle_ok=True)  # works from an analysis file too
# Bounded views of the statistics (the chosen blocks and classes), never every class x channel: 1,000 ImageNet classes
# x 15,104 SE-ResNet-50 channels would be 15 million rows.
stats, indices = analysis.stats, analysis.indices
st.caption(class_caption(analysis))
if analysis.circular:
    st.warning(CIRCULAR_NOTE)
if int(indices["max_class_count"].max()) == 1:
    st.warning("Every class has one image: Fig. 7's ±1 std bands cannot be computed (a single image has no "
               "within-class spread), and class specificity falls back from eta² to the spread of the class means.")

# class-index order; also fixes the colours
classes = derived(analysis, "classes", lambda: [c for c in stats.class_table()["class"] if c != "all"])
blocks = list(indices["block"])
stages = sorted(indices["stage"].unique())

left, right = st.columns([3, 2])
if "compare_classes" not in st.session_state or st.session_state.get("_compare_classes_present") != classes:
    # first visit, or other images/classes: up to six classes, else the four with the most images (ImageNet: 1,000),
    # ties broken as the sidebar and `paper` break them (the paper's goldfish, pug, airliner, cliff first)
    model = selection.model
    st.session_state["compare_classes"] = classes if len(classes) <= 6 else paper.default_classes(
        stats, model.wnids if model else None, model.class_names if model else None)
st.session_state["_compare_classes_present"] = classes
chosen = left.multiselect("Classes to compare", classes, key=kept("compare_classes"))
preset = right.radio("View", ["Paper Fig. 6 (preset blocks)", "Paper Fig. 7 (one class, ±1 std)",
                              "Per-stage distributions", "Class × channel heatmap"], key=kept("compare_view"))
if not chosen:
    st.warning("Choose at least one class.")
    st.stop()
if len(chosen) < 2 and not preset.startswith("Paper Fig. 7"):
    st.info("One class chosen: add a second to compare side by side.")

result = analysis.result  # per-image gates, when kept, give Fig. 6 / 7 intervals of the class means
gated = result is not None and bool(result.gates)
if preset.startswith("Paper Fig. 6"):
    c1, c2, c3 = st.columns(3)
    all_channels = c1.toggle("All channels", key=kept("fig6_all"))
    n_channels = c2.number_input("Channels sampled", 5, 500, 50, key=kept("fig6_n"), disabled=all_channels)
    seed = c3.number_input("Seed", 0, 10_000, 0, key=kept("fig6_seed"))
    preset_blocks = derived(analysis, "paper_preset_blocks", lambda: plots.paper_preset_blocks(indices))
    fig_blocks = st.multiselect("Blocks (default: the paper's preset — last block of each stage and every block "
                                "of the last stage)", blocks, default=preset_blocks,
                                key=per_model("fig6_blocks", stats.model))
    shown_blocks = fig_blocks or preset_blocks

    def fig6() -> tuple:
        means = {b: stats.class_means(b, chosen, include_all=True) for b in blocks if b in shown_blocks}  # depth order
        bands = paper.class_mean_bands(result, analysis.grouping, stats, list(means), chosen) if gated else {}
        return plots.fig6_matrix(means, model=stats.model, n_channels=int(n_channels), seed=int(seed),
                                 all_channels=all_channels, all_classes=classes, intervals=bands,
                                 interval_note=paper.interval_note()), bands

    # built once per view of this analysis (ui.memo.derived): a rerun that changes nothing here rebuilds nothing
    fig, bands = derived(analysis, ("fig6", tuple(chosen), tuple(shown_blocks), int(n_channels), int(seed),
                                    all_channels), fig6)
elif preset.startswith("Paper Fig. 7"):
    c1, c2 = st.columns(2)
    block = c1.selectbox("Block", blocks, index=len(blocks) - 1, key=per_model("fig7_block", stats.model))
    cls = c2.selectbox("Class", chosen, key=kept("fig7_class"))

    def fig7() -> tuple:
        bands = paper.class_mean_bands(result, analysis.grouping, stats, [block], [cls]) if gated else {}
        return plots.fig7(stats.frame([block], [cls], hist=False), block, cls, all_classes=classes,
                          interval=bands.get(block, {}).get(cls), interval_note=paper.interval_note()), bands

    fig, bands = derived(analysis, ("fig7", block, cls), fig7)
elif preset.startswith("Per-stage"):
    c1, c2 = st.columns(2)
    stage = c1.selectbox("Stage", stages, index=len(stages) - 1, key=per_model("dist_stage", stats.model))
    kind = c2.radio("Kind", ["box", "violin"], horizontal=True, key=kept("dist_kind"))
    stage_blocks = list(indices.loc[indices["stage"] == stage, "block"])
    # Per-class histograms pooled over each block's channels: kept for every class, however many.
    fig = derived(analysis, ("distributions", int(stage), tuple(chosen), kind), lambda: plots.distributions(
        stats.block_frame(stage_blocks, chosen), stage=int(stage), classes=chosen, kind=kind, all_classes=classes))
else:
    block = st.selectbox("Block", blocks, index=len(blocks) - 1, key=per_model("heat_block", stats.model))

    def heatmap():
        labels, counts, means = stats.class_means(block, chosen)
        return plots.heatmap_matrix(means, labels, counts, model=stats.model, block=block, all_classes=classes)

    fig = derived(analysis, ("heatmap", block, tuple(chosen)), heatmap)

if preset.startswith("Paper Fig.") and any(bands.values()):
    st.caption(f"Error bars: {paper.interval_note()}, for the classes with 2+ images.")
event = plotly_chart(fig, width="stretch", key="compare_chart", on_select="rerun", selection_mode="points")
channel_link(fig, event, None if preset.startswith(("Paper Fig. 6", "Per-stage")) else block)  # -> Channels page
exports.keep_figure("Compare classes", fig)

with st.expander("Indices per block beside chance (class specificity, saturation)"):
    if analysis.circular:
        st.warning(CIRCULAR_NOTE)
    st.dataframe(derived(analysis, "chance_index_table", lambda: chance_index_table(indices, analysis.chance)),
                 hide_index=True, key="compare_indices")
    st.caption(chance_caption(analysis.chance) or "chance unknown: this analysis file holds no chance table")
    if analysis.chance_note:
        st.info(analysis.chance_note)
    st.caption("Chance: the value the index takes when the labels are shuffled among the same images (class sizes "
               "kept), so there is no class effect; p: the share of shuffles reaching the observed value; "
               "\"above chance\" only when p < 0.05. Saturation does not depend on classes (no chance level). ")
    st.caption("Specificity: share of gate variance explained by class, pooled over channels (eta², or the spread "
               "fallback with one image per class). Saturation: share of channels with mean gate ≥ 0.9. The paper "
               "(Hu et al., role of excitation) found: in early blocks the class curves nearly coincide "
               "(class-agnostic); class specificity rises with depth; SE_5_2's gates saturate near 1 in most "
               "channels, so that block is close to an identity; SE_5_3 shows a similar pattern across classes, up "
               "to a scale. The Depth page tests each claim on this network.")

with st.expander("How to read this"):
    st.markdown(verdict.GLOSSARY + """
- **Fig. 6** (the paper's preset: the last block of each stage and every block of the last stage): one panel per
  block, x = channel index, y = the channel's mean gate over a class's images; one line per class, the dashed
  dark-grey line is the mean over all images. Lines that lie on top of each other mean the block treats the
  classes alike (class-agnostic); lines that separate mean class-specific gating. Curves of the same shape at
  different heights are "similar up to a scale".
- **Fig. 7** (one class): the class's mean gate per channel with a band of ±1 std over its images, and the
  all-image mean. A narrow band means the gates hardly depend on the image within the class; the band needs at
  least 2 images in the class.
""")
