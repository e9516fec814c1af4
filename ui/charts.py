"""``st.plotly_chart`` for the pages: a figure :func:`ui.memo.derived` built is turned into its dict once, not on
every rerun that draws it again (a view-only rerun of Compare classes spent about a fifth of its time there)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import streamlit as st

from ui.memo import shared_figure_dict


class _AsDict(go.Figure):
    """A figure that is already its dict: ``st.plotly_chart`` asks a figure only for ``to_dict()`` (then serialises
    that dict), so this stands in for a shared figure without copying or validating it again."""

    def __init__(self, spec: dict) -> None:  # noqa: D107 - go.Figure.__init__ is skipped on purpose: no validation
        self._spec = spec

    def to_dict(self) -> dict:
        return self._spec


def plotly_chart(fig: go.Figure, **kwargs: Any) -> Any:
    """``st.plotly_chart(fig, **kwargs)``; a shared figure's dict is reused (:func:`ui.memo.shared_figure_dict`)."""
    spec = shared_figure_dict(fig)
    return st.plotly_chart(fig if spec is None else _AsDict(spec), **kwargs)
