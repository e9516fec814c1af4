"""Widget keys whose values outlive the page (or source) that draws them.

Streamlit deletes a widget's value when a run does not draw the widget; writing the value back at the top of
every run (:func:`keep_widget_values`, called by app.py) keeps it as plain session state. A widget opts in by
taking its key from :func:`kept` (or :func:`per_model`), which records the key in this session's registry: no list
to extend for a new page. Buttons, uploaders and charts must not (their state is not a value that can be written).
"""

from __future__ import annotations

import streamlit as st

_REGISTRY = "_kept_widget_keys"  # session state: the keys handed out by kept() in this session


def kept(key: str) -> str:
    """``key``, recorded so that its widget's value is kept while the widget is not drawn."""
    registry = st.session_state.get(_REGISTRY)
    if registry is None:
        registry = st.session_state[_REGISTRY] = set()
    registry.add(key)
    return key


def per_model(key: str, model_name: str) -> str:
    """The (kept) widget key of a setting that names a model's blocks or stages. Each model keeps its own: a
    browser resends a widget's last value, so one shared key would carry another model's blocks (where names
    coincide) into this model's preset."""
    return kept(f"{key}@{model_name}")


def keep_widget_values() -> None:
    """Carry every kept widget value over to the next run, drawn or not (call at the top of app.py)."""
    for key in st.session_state.get(_REGISTRY, ()):
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]
