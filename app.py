"""senet-viz dashboard: `streamlit run app.py`.

The entry page sets up the sidebar shared by every page (model, weights, device, images) and navigates
between the pages in app_pages/. Pages read what the sidebar chose from ``ui.selection.current()``.

The page scripts live in ``app_pages/``, not ``pages/``: Streamlit 1.67 runs a fresh server's first request to a
page URL in its legacy "pages folder" mode, without this file, whenever a ``pages/`` folder sits beside it. With no
such folder every run starts here, and this file is the only way into a page.
"""

from __future__ import annotations

import streamlit as st

from ui import collector, sidebar
from ui.widgets import keep_widget_values

st.set_page_config(page_title="senet-viz: inside SE channel attention", page_icon=":material/biotech:", layout="wide")

PAGES = [
    st.Page("app_pages/compare.py", title="Compare classes", icon=":material/bar_chart:", default=True),
    st.Page("app_pages/explore.py", title="Explore", icon=":material/image_search:"),
    st.Page("app_pages/channels.py", title="Channels", icon=":material/tune:"),
    st.Page("app_pages/depth.py", title="Depth", icon=":material/stacked_line_chart:"),
    st.Page("app_pages/remove.py", title="Remove SE blocks", icon=":material/content_cut:"),
    st.Page("app_pages/attribution.py", title="Attribution", icon=":material/center_focus_strong:"),
    st.Page("app_pages/cost.py", title="Cost", icon=":material/calculate:"),
    st.Page("app_pages/export.py", title="Export", icon=":material/download:"),
]

with collector.script_run():  # full garbage collections wait until the server is idle (ui/collector.py)
    keep_widget_values()  # settings survive leaving a page
    navigation = st.navigation(PAGES)
    sidebar.render()
    navigation.run()
