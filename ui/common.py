"""Small helpers the pages share: get the current analysis or explain what is missing."""

from __future__ import annotations

import streamlit as st

from ui import sidebar, state
from ui.text import plain

# Value widgets whose state must outlive the page (or source) that draws them. Streamlit deletes a widget's
# value when a run does not draw the widget; writing the value back at the top of every run keeps it as plain
# session state. Buttons, uploaders and charts cannot be written (their state is not a value), hence the list.
_KEPT_KEYS = frozenset({
    "work_from", "bundle_path", "bundle_chosen",
    "model_name", "device", "image_source", "weights_path", "server_folder", "fmnist_limit", "group_by_prediction",
    "compare_classes", "compare_view", "fig6_all", "fig6_n", "fig6_seed", "fig7_class", "dist_kind", "depth_metrics",
    "depth_second", "depth_second_bundle",
    "explore_image", "attr_image", "attr_mode", "remove_how", "remove_k", "remove_mode", "remove_on",
    "sweep_modes", "sweep_kinds"})
_KEPT_PREFIXES = ("class_name_", "classes_", "all_classes_")


def per_model(key: str, model_name: str) -> str:
    """The widget key of a setting that names a model's blocks or stages. Each model keeps its own: a browser
    resends a widget's last value, so one shared key would carry another model's blocks (where names coincide)
    into this model's preset."""
    return f"{key}@{model_name}"


def keep_widget_values() -> None:
    """Carry every listed widget value over to the next run, drawn or not (call at the top of app.py)."""
    for key in list(st.session_state):
        if isinstance(key, str) and (key in _KEPT_KEYS or key.startswith(_KEPT_PREFIXES) or "@" in key):
            st.session_state[key] = st.session_state[key]


def need_model_and_images() -> sidebar.Selection:
    """The sidebar's selection, or stop the page with a message that says what to do."""
    selection = sidebar.current()
    if selection.bundle is not None:
        st.info("This page runs a network, and an analysis file holds statistics only: Compare classes, Depth and "
                "Export work from it. Choose 'A model and images' under 'Work from' in the sidebar for this page.")
        st.stop()
    if selection.model is None:
        st.info(selection.model_error or "Pick a model in the sidebar.")
        st.stop()
    if selection.images is None or not selection.images.items:
        st.info("Add images in the sidebar: the embedded samples, uploads grouped into classes, or a folder.")
        st.stop()
    return selection


def need_analysis(bundle_ok: bool = False) -> tuple[sidebar.Selection, state.Analysis]:
    """The current analysis: of the sidebar's model and images, or (``bundle_ok``) of an opened analysis file."""
    selection = sidebar.current()
    if bundle_ok and selection.bundle is not None:
        return selection, state.bundle_analysis(selection.bundle)
    selection = need_model_and_images()
    analysis = state.analyse(selection.model, selection.images, selection.group_by_prediction)
    skipped = [s for s in analysis.result.skipped if s not in selection.skipped]
    if skipped:
        with st.expander(f"{len(skipped)} image(s) could not be read and were left out", expanded=True,
                         icon=":material/warning:"):
            for s in skipped:
                st.markdown(f"- {plain(s.file)}: {plain(s.reason, None)}")
    if analysis.result.n == 0:
        st.error("None of the images could be read; see the reasons above and add other images.")
        st.stop()
    return selection, analysis


def class_caption(analysis: state.Analysis) -> str:
    table = analysis.stats.class_table()
    counts = table[table["class_index"] >= 0][["class", "count"]]
    parts = [f"{plain(c, 80)} (n={n})" for c, n in counts.itertuples(index=False)]
    n = analysis.result.n if analysis.result is not None else int(table["count"].iloc[0])
    return f"{n} images, grouped by {analysis.grouping}: " + ", ".join(parts[:12]) + (
        f" … +{len(parts) - 12} more" if len(parts) > 12 else "")


def pick_image(selection: sidebar.Selection, analysis: state.Analysis, key: str) -> tuple[dict, str]:
    """An image selectbox over the analysed images; returns (items by key, chosen key)."""
    items = {it.key: it for it in selection.images.items}
    chosen = st.selectbox("Image", analysis.result.keys,
                          format_func=lambda k: f"{items[k].name} ({items[k].label_name or '?'})", key=key)
    return items, chosen
