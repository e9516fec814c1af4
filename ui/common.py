"""Small helpers the pages share: get the current analysis or explain what is missing."""

from __future__ import annotations

import streamlit as st

from ui.bundles import bundle_analysis
from ui.memo import derived
from ui.results import Analysis, analyse
from ui.selection import Selection, current
from ui.text import plain
from ui.widgets import kept


def need_model_and_images() -> Selection:
    """The sidebar's selection, or stop the page with a message that says what to do."""
    selection = current()
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


def need_analysis(bundle_ok: bool = False) -> tuple[Selection, Analysis]:
    """The current analysis: of the sidebar's model and images, or (``bundle_ok``) of an opened analysis file."""
    selection = current()
    if bundle_ok and selection.bundle is not None:
        return selection, bundle_analysis(selection.bundle)
    selection = need_model_and_images()
    analysis = analyse(selection.model, selection.images, selection.group_by_prediction)
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


def class_caption(analysis: Analysis) -> str:
    """"N images, grouped by ...: class (n=..), ..." (built once per analysis)."""
    return derived(analysis, "class_caption", lambda: _class_caption(analysis))


def _class_caption(analysis: Analysis) -> str:
    table = analysis.stats.class_table()
    counts = table[table["class_index"] >= 0][["class", "count"]]
    parts = [f"{plain(c, 80)} (n={n})" for c, n in counts.itertuples(index=False)]
    n = analysis.result.n if analysis.result is not None else int(table["count"].iloc[0])
    return f"{n} images, grouped by {analysis.grouping}: " + ", ".join(parts[:12]) + (
        f" … +{len(parts) - 12} more" if len(parts) > 12 else "")


def pick_image(selection: Selection, analysis: Analysis, key: str) -> tuple[dict, str]:
    """An image selectbox over the analysed images (its value kept under ``key``); returns (items by key, chosen
    key)."""
    items = {it.key: it for it in selection.images.items}
    chosen = st.selectbox("Image", analysis.result.keys,
                          format_func=lambda k: f"{items[k].name} ({items[k].label_name or '?'})", key=kept(key))
    return items, chosen
