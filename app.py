"""senet-viz dashboard: `streamlit run app.py`.

The entry page sets up the sidebar shared by every page (model, weights, device, images) and navigates
between the pages in pages/. Pages read what the sidebar chose from ``ui.sidebar.current()``.

Each page script calls ``ui.routing.through_app()`` first: Streamlit 1.67 runs a fresh server's first request to a
page URL (e.g. ``/remove``) in its legacy "pages folder" mode, without this file; the call hands that run back to
the navigation below (see ui/routing.py).
"""

from __future__ import annotations

import streamlit as st

from ui import sidebar
from ui.common import keep_widget_values

st.set_page_config(page_title="senet-viz: inside SE channel attention", page_icon=":material/biotech:", layout="wide")

PAGES = [
    st.Page("pages/compare.py", title="Compare classes", icon=":material/bar_chart:", default=True),
    st.Page("pages/explore.py", title="Explore", icon=":material/image_search:"),
    st.Page("pages/channels.py", title="Channels", icon=":material/tune:"),
    st.Page("pages/depth.py", title="Depth", icon=":material/stacked_line_chart:"),
    st.Page("pages/remove.py", title="Remove SE blocks", icon=":material/content_cut:"),
    st.Page("pages/attribution.py", title="Attribution", icon=":material/center_focus_strong:"),
    st.Page("pages/cost.py", title="Cost", icon=":material/calculate:"),
    st.Page("pages/export.py", title="Export", icon=":material/download:"),
]

keep_widget_values()  # settings survive leaving a page
navigation = st.navigation(PAGES)
sidebar.render()
navigation.run()
