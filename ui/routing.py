"""Keep every page URL on app.py's navigation although the page scripts live in ``pages/``.

Streamlit 1.67 decides per process whether an app uses its legacy "pages folder" mode: when a ``pages/`` folder
sits beside the entry file, the first run of a fresh server (and every AppTest run) executes ``pages/<name>.py``
straight, without app.py (so without the shared sidebar and the titled navigation), until some run calls
``st.navigation``. A page that finds itself run that way switches the process to ``st.navigation`` mode and runs
app.py in its place, within the same run: app.py's navigation resolves the same page (a page's id is the hash of
its URL path, equal in both modes), so the user lands on the page they asked for, with the sidebar, without
Streamlit's "Page not found" dialog, and without a rerun that would drop a button click.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

APP = Path(__file__).resolve().parent.parent / "app.py"


def through_app() -> None:
    """Call first in every page script: hand a legacy-mode run over to app.py's navigation."""
    if not PagesManager.uses_pages_directory:
        return
    PagesManager.uses_pages_directory = False  # what st.navigation itself sets
    runpy.run_path(str(APP), run_name="__main__")  # draws the sidebar and this page through st.navigation
    st.stop()  # this file's own code already ran inside app.py's navigation
