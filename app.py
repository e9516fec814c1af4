"""senet-viz dashboard: `streamlit run app.py`.

The entry page sets up the sidebar shared by every page (model, weights, device, images) and navigates
between the pages in views/. Pages read what the sidebar chose from ``ui.sidebar.current()``.

The page files live in ``views/``, not ``pages/``: Streamlit 1.67 still switches to its legacy "pages folder"
mode when a ``pages/`` folder sits beside the entry file and the first request of a fresh server is a page URL
(e.g. ``/remove``), which drops the sidebar and the st.navigation menu.
"""

from __future__ import annotations

import streamlit as st

from ui import sidebar
from ui.common import keep_widget_values

st.set_page_config(page_title="senet-viz: inside SE channel attention", page_icon=":material/biotech:", layout="wide")

PAGES = [
    st.Page("views/compare.py", title="Compare classes", icon=":material/bar_chart:", default=True),
    st.Page("views/explore.py", title="Explore", icon=":material/image_search:"),
    st.Page("views/depth.py", title="Depth", icon=":material/stacked_line_chart:"),
    st.Page("views/remove.py", title="Remove SE blocks", icon=":material/content_cut:"),
    st.Page("views/attribution.py", title="Attribution", icon=":material/center_focus_strong:"),
    st.Page("views/cost.py", title="Cost", icon=":material/calculate:"),
    st.Page("views/export.py", title="Export", icon=":material/download:"),
]

keep_widget_values()  # settings survive leaving a page
navigation = st.navigation(PAGES)
sidebar.render()
navigation.run()
