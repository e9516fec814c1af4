"""What removing SE blocks costs and saves: the sweep's accuracy vs parameters saved (with its Pareto front per
mode), SE parameters per block, and MAC counts in readable units."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from senet_viz.plots.common import PAPER, layout_title, require_columns

_MODE_COLORS = {"identity": "#D62728", "mean": "#1F77B4"}

_KIND_SYMBOLS = {"block": "circle", "stage": "square", "last": "diamond"}


def sweep_figure(sweep: pd.DataFrame, reference: dict | None = None) -> go.Figure:
    """Accuracy change against parameters saved for every ablation of a sweep, with the Pareto front per mode.

    ``sweep`` is :func:`senet_viz.analysis.ablation.sweep`'s frame. ``reference`` (e.g.
    ``paper.PAPER_LAST_STAGE_CLAIM``)
    adds the paper's point ``(params_saved_share, top1_change_points)`` as a star, labelled with its note.
    When no image carries a label in the model's classes (top-1 cannot be scored), two panels show instead the
    top-1 agreement with the full network (%) and KL(full || ablated) (nats) against parameters saved.
    """
    from senet_viz.analysis.ablation import pareto_front  # imported here: senet_viz.analysis.ablation imports torch

    require_columns(sweep, ("model", "kind", "config", "mode", "d_top1", "params_saved_pct", "agreement", "kl"),
                    "sweep")
    scored = not sweep["d_top1"].isna().all()
    model = str(sweep["model"].iloc[0])
    panels = [("d_top1", "top-1 change (percentage points)", True)] if scored else [
        ("agreement_pct", "top-1 agreement with the full network (%)", True),
        ("kl", "KL(full ‖ ablated) (nats)", False)]
    sweep = sweep.assign(agreement_pct=100 * sweep["agreement"].astype(float))
    fig = make_subplots(rows=1, cols=len(panels), horizontal_spacing=0.08,
                        subplot_titles=[label for _, label, _ in panels] if len(panels) > 1 else None)
    for col, (y, _, higher) in enumerate(panels, start=1):
        for mode, part in sweep.groupby("mode", sort=False):
            color = _MODE_COLORS.get(str(mode), "#7F7F7F")
            for kind, sub in part.groupby("kind", sort=False):
                fig.add_trace(go.Scatter(
                    x=sub["params_saved_pct"], y=sub[y], mode="markers", name=f"{mode}: {kind}",
                    legendgroup=f"{mode}: {kind}", showlegend=col == 1,
                    marker={"color": color, "symbol": _KIND_SYMBOLS.get(str(kind), "circle"), "size": 9,
                            "line": {"width": 0.5, "color": "white"}},
                    text=sub["config"], meta={"mode": mode, "kind": kind, "metric": y},
                    customdata=np.stack([sub["agreement"].astype(float), sub["kl"].astype(float),
                                         sub["d_top1"].astype(float)], axis=1),
                    hovertemplate="%{text}<br>params saved %{x:.2f}%<br>top-1 change %{customdata[2]:+.2f} points"
                                  "<br>agreement %{customdata[0]:.1%}<br>KL %{customdata[1]:.3f} nats<extra>"
                                  + str(mode) + "</extra>"), row=1, col=col)
            front_df = pareto_front(part, "params_saved_pct", y, higher_is_better=higher)
            fig.add_trace(go.Scatter(x=front_df["params_saved_pct"], y=front_df[y], mode="lines",
                                     name=f"{mode}: Pareto front", legendgroup=f"{mode}: Pareto front",
                                     showlegend=col == 1, line={"color": color, "width": 1.5, "dash": "dot"},
                                     meta={"mode": mode, "kind": "pareto", "metric": y}, hoverinfo="skip"),
                          row=1, col=col)
        fig.update_xaxes(title="parameters saved (% of the full network)", row=1, col=col)
        fig.update_yaxes(title=panels[col - 1][1], row=1, col=col)
    if reference is not None and scored:
        fig.add_trace(go.Scatter(
            x=[100 * reference["params_saved_share"]], y=[reference["top1_change_points"]], mode="markers+text",
            name=f"paper: {reference.get('model', '')} {reference.get('blocks', '')}", text=["paper"],
            textposition="top center", marker={"symbol": "star", "size": 15, "color": "#FF7F0E"},
            meta={"kind": "reference"}, hovertext=reference.get("note", ""), hoverinfo="text"))
    if scored:
        fig.add_hline(y=0, line={"color": "#999", "width": 1})
    n = int(sweep["n_images"].iloc[0]) if "n_images" in sweep else None
    full = sweep["full_top1"].iloc[0] if "full_top1" in sweep else None
    ncal = int(sweep["n_calibration"].iloc[0]) if "n_calibration" in sweep else 0
    subtitle = (f"{n} evaluation images" + (f", mean gates fitted on {ncal} other images" if ncal else "")
                + (f"; full network top-1 {full:.1%}" if full is not None and not pd.isna(full) else
                   "; no image has a label among the model's classes, so top-1 cannot be scored")
                + f". identity = gate 1 (the paper's removal), mean = gate frozen to its mean. cf. {PAPER}")
    what = "top-1 change" if scored else "agreement and KL"
    layout_title(fig, f"SE ablation sweep — {model}: {what} vs parameters saved", subtitle)
    fig.update_layout(legend={"title": {"text": "mode: configuration"}}, height=520)
    return fig


def cost_figure(blocks: pd.DataFrame, model: str, total_params: int) -> go.Figure:
    """SE parameters per block (bars coloured by stage) as a share of the whole network."""
    require_columns(blocks, ("name", "stage", "params"), "cost blocks")
    fig = go.Figure()
    for stage, sub in blocks.groupby("stage", sort=True):
        fig.add_trace(go.Bar(x=sub["name"], y=100 * sub["params"] / total_params, name=f"stage {stage}",
                             customdata=sub["params"], meta={"stage": int(stage)},
                             hovertemplate="%{x}: %{customdata:,} parameters (%{y:.2f}%)<extra></extra>"))
    se_share = 100 * blocks["params"].sum() / total_params
    layout_title(fig, f"SE parameters per block — {model}",
                  f"all SE blocks: {blocks['params'].sum():,} of {total_params:,} parameters ({se_share:.1f}%)")
    fig.update_layout(legend={"title": {"text": "stage"}})
    fig.update_xaxes(title="SE block")
    fig.update_yaxes(title="parameters (% of the network)")
    return fig


def format_macs(macs: float) -> str:
    """A MAC count in the unit that shows its digits: 3.8605 GMACs, 1.58 MMACs, 8.19 kMACs."""
    for unit, scale in (("GMACs", 1e9), ("MMACs", 1e6), ("kMACs", 1e3)):
        if abs(macs) >= scale:
            return f"{macs / scale:.4g} {unit}" if unit != "GMACs" else f"{macs / scale:.4f} {unit}"
    return f"{macs:,.0f} MACs"
