"""Channels: what one SE gate channel responds to — the images that open and close it most, its gates per class,
where in the top images its input is strongest, and how class-selective the channels of each block are."""

import streamlit as st

from senet_viz.analysis import channels
from senet_viz.analysis.chance import CIRCULAR_NOTE
from senet_viz.plots import channels as channel_plots
from ui import channels as view
from ui import exports
from ui.charts import plotly_chart
from ui.text import plain

st.header("Channels")
src = view.source()
view.arrive(src)  # ?block=..&channel=.. from a click in Compare classes
block_key, channel_key = view.widget_keys(src.model)
if src.grouping == "predicted class":
    st.warning(CIRCULAR_NOTE)

summary = view.summary(src)
trend = channels.depth_trend(summary)
single = bool((summary["class_means_from"] == "single images").all())
fig_depth = channel_plots.selectivity_depth(summary, trend, metrics=("selectivity",) if single else
                                            ("selectivity", "eta2"))
plotly_chart(fig_depth, width="stretch", key="channels_depth")
exports.keep_figure("Channel selectivity by depth", fig_depth)
exports.keep_table("Channel selectivity by block", summary)
if single:
    st.warning("Every class holds one image here, so a class mean is a single image: the selectivity says how much "
               "one image stands out on a channel, not how a channel is tuned to a class, and eta² cannot be "
               "computed (no within-class spread). Add images per class, or group by predicted class in the sidebar.")
st.caption(f"Selectivity (Morcos et al. 2018): (μ_max − μ_rest) / (μ_max + μ_rest) over the class means of a "
           f"channel's gate, 0 = the same for every class, 1 = open for one class only; images grouped by "
           f"{src.grouping}. Spearman ρ of the median against depth: {trend['rho']:.2f} (p = {trend['p_value']:.3g},"
           f" {trend['n_blocks']} blocks): {trend['verdict']}."
           + (f" {plain(channels.left_out_text(trend), None)}." if trend["left_out"] else ""))

names = list(src.blocks)
if st.session_state.get(block_key) not in names:
    st.session_state[block_key] = names[-1]
c1, c2 = st.columns([1, 1])
block = c1.selectbox("Block", names, key=block_key)
width = src.blocks[block]
n_top = c2.slider("Channels in the table", 5, min(100, width), min(15, width), key="channels_n_top") if width > 5 \
    else width

st.subheader(f"Most class-specific channels of {block}")
table = view.channel_table(src, block)
top = channels.most_selective(table, n_top)
shown = top[["rank", "channel", "selectivity", "preferred_class", "preferred_count", "mu_max", "mu_rest", "eta2"]]
event = st.dataframe(shown, hide_index=True, on_select="rerun", selection_mode="single-row",
                     key=f"channels_top_table:{src.model}:{block}", column_config={
                         "selectivity": st.column_config.ProgressColumn("selectivity", min_value=0.0, max_value=1.0,
                                                                        format="%.3f")})
st.caption("Choose a row to open that channel below.")
exports.keep_table("Most class-specific channels", top)  # one name: the latest view replaces the last
view.apply_table_selection(event, top, channel_key, block)

if not 0 <= int(st.session_state.get(channel_key, -1)) < width:  # first visit: the most class-specific channel
    st.session_state[channel_key] = int(top["channel"].iloc[0])
c1, c2 = st.columns([1, 1])
channel = int(c1.number_input(f"Channel of {block} (0–{width - 1})", 0, width - 1, key=channel_key))
k = int(c2.slider("Images at each end", 4, 32, 8, key="channels_k"))
row = table.iloc[channel]
st.markdown(f"**{block} · channel {channel}** — selectivity {row['selectivity']:.3f}, preferred class "
            f"**{plain(channels.preferred_text(row['preferred_class']))}** (mean gate {row['mu_max']:.3f} vs "
            f"{row['mu_rest']:.3f} for the others)")

if src.exemplars is None or src.values is None:
    st.info(src.missing)
    st.stop()
found = src.exemplars(block, k, channel)
frame = found.frame(channel, src.pred_names)  # predictions named by the model's classes
exports.keep_table("Channel exemplars", frame)
with st.container(key="channel_exemplars"):
    for end, title in (("highest", "Highest gate: the images that open it most"),
                       ("lowest", "Lowest gate: the images that close it most")):
        images, captions, missing = view.thumbnails(src, frame[frame["end"] == end])
        st.markdown(f"**{title}** (of {found.n_images:,} images)")
        if images:
            st.image(images, caption=captions, width=view.THUMB_PX)
        if missing:
            st.caption(f"{missing} image(s) not found: give the folder of the extract's images above.")

values = src.values(block, channel)
values = values.assign(**{"class": src.classes_of(values)})
fig_dist = channel_plots.channel_distribution(values, src.model, block, channel, grouping=src.grouping,
                                              all_classes=src.stats.class_names)
plotly_chart(fig_dist, width="stretch", key="channels_distribution")
exports.keep_figure("Channel gate per class", fig_dist)

st.subheader("Where the channel's input is strongest in the top images")
if src.loaded is None:
    st.info(f"Pre-gate maps need the network: choose {plain(src.model)} in the sidebar.")
else:
    keys = list(frame.loc[frame["end"] == "highest", "key"].head(8))
    try:
        kept, crops, maps = view.pregate_maps(src, block, channel, keys)
    except ValueError as exc:
        st.info(f"No pre-gate map for {block}: {exc}")
    else:
        if crops:
            top_rows = frame[frame["end"] == "highest"].set_index("key").loc[kept]
            fig_maps = channel_plots.pregate_figure(
                crops, maps, [f"#{r.rank} s={r.gate:.3f}" for r in top_rows.itertuples()],
                f"{block} channel {channel}: its SE input over the top images — {src.model}")
            plotly_chart(fig_maps, width="stretch", key="channels_maps")
            exports.keep_figure("Channel input maps", fig_maps)
