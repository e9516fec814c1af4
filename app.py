"""senet-viz dashboard: `streamlit run app.py`.

The entry page sets up the sidebar shared by every page (model, weights, device, images) and navigates
between the pages in pages/. Pages read what the sidebar chose from ``ui.sidebar.current()``.
"""

from __future__ import annotations

import streamlit as st

from ui import sidebar

st.set_page_config(page_title="senet-viz: inside SE channel attention", page_icon="🔬", layout="wide")

PAGES = [
    st.Page("pages/compare.py", title="Compare classes", icon="📊", default=True),
    st.Page("pages/explore.py", title="Explore", icon="🔎"),
    st.Page("pages/depth.py", title="Depth", icon="📈"),
    st.Page("pages/remove.py", title="Remove SE blocks", icon="✂️"),
    st.Page("pages/attribution.py", title="Attribution", icon="🎯"),
    st.Page("pages/cost.py", title="Cost", icon="🧮"),
    st.Page("pages/export.py", title="Export", icon="💾"),
]

navigation = st.navigation(PAGES)
sidebar.render()
navigation.run()
