"""ui.charts.plotly_chart: a figure ui.memo.derived built is walked into its dict once, and Streamlit sends exactly
what it sends for the figure itself."""

from __future__ import annotations

import gc

import numpy as np
import plotly.graph_objects as go
from streamlit.testing.v1 import AppTest

from ui import memo


class _Owner:  # what derived() memoises under (an Analysis in the app); weak-referenceable
    pass


def _figure() -> go.Figure:
    fig = go.Figure(go.Scatter(x=np.arange(50), y=np.linspace(0, 1, 50), mode="lines+markers", name="a"))
    fig.add_trace(go.Bar(x=["p", "q"], y=np.array([0.25, 0.5], dtype=np.float32)))
    return fig.update_layout(title="shared", height=300)


def test_a_derived_figure_is_walked_into_its_dict_once(monkeypatch):
    owner = _Owner()
    fig = memo.derived(owner, "fig", _figure)
    walks = []
    real = go.Figure.to_dict
    monkeypatch.setattr(go.Figure, "to_dict", lambda self: walks.append(1) or real(self))
    first = memo.shared_figure_dict(fig)
    assert first == real(fig) and len(walks) == 1
    assert memo.shared_figure_dict(fig) is first and len(walks) == 1  # the next rerun: no walk
    pair = memo.derived(owner, "pair", lambda: (_figure(), {"bands": 1}))  # a figure inside a tuple counts too
    assert memo.shared_figure_dict(pair[0]) is not None


def test_other_figures_are_not_shared():
    assert memo.shared_figure_dict(_figure()) is None  # built by a page: it may change between reruns
    assert memo.shared_figure_dict({"data": []}) is None


def test_a_gone_figure_leaves_nothing_behind():
    owner = _Owner()
    fig = memo.derived(owner, "fig", _figure)
    key = id(fig)
    assert key in memo._shared_figures
    del owner, fig
    gc.collect()
    assert key not in memo._shared_figures


def _app() -> None:
    import plotly.graph_objects as go
    import streamlit as st

    from ui.charts import plotly_chart
    from ui.memo import derived

    owner = st.session_state.setdefault("owner", type("Owner", (), {})())
    fig = derived(owner, "fig", lambda: go.Figure(go.Scatter(x=list(range(30)), y=[i / 30 for i in range(30)]))
                  .update_layout(title="same"))
    st.plotly_chart(fig, key="plain")
    plotly_chart(fig, key="fast")
    plotly_chart(go.Figure(go.Bar(x=["a"], y=[1])), key="unshared")


def test_streamlit_sends_the_same_spec_for_the_shared_dict():
    at = AppTest.from_function(_app, default_timeout=60)
    at.run()
    at.run()  # the second run takes the remembered dict
    assert not at.exception
    charts = [e.proto for e in at.main if type(getattr(e, "proto", None)).__name__ == "PlotlyChart"]
    assert len(charts) == 3
    plain, fast, unshared = charts
    assert fast.spec == plain.spec and '"title"' in fast.spec
    assert '"type":"bar"' in unshared.spec.replace(" ", "")
