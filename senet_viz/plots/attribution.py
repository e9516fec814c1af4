"""Attribution figures: Grad-CAM overlays and the per-channel gradient × gate of one SE block."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from senet_viz.plots.common import layout_title


def gradcam_figure(image: np.ndarray, cams: dict[str, np.ndarray], title: str) -> go.Figure:
    """The image with one Grad-CAM overlay per entry of ``cams`` (label -> H x W map in [0, 1]), side by side."""
    labels = list(cams)
    fig = make_subplots(rows=1, cols=len(labels), subplot_titles=labels, horizontal_spacing=0.03)
    for i, label in enumerate(labels, start=1):
        fig.add_trace(go.Image(z=image, hoverinfo="skip"), row=1, col=i)
        fig.add_trace(go.Heatmap(z=cams[label], colorscale="Jet", zmin=0, zmax=1, opacity=0.45, showscale=i == 1,
                                 colorbar={"title": {"text": "Grad-CAM"}}, meta={"cam": label},
                                 hovertemplate="x %{x}, y %{y}: %{z:.2f}<extra>" + label + "</extra>"), row=1, col=i)
        fig.update_xaxes(showticklabels=False, row=1, col=i)
        fig.update_yaxes(showticklabels=False, autorange="reversed", scaleanchor=f"x{i if i > 1 else ''}", row=1,
                         col=i)
    layout_title(fig, title, "Grad-CAM (captum LayerGradCam) at the stage's last SE-bearing block, "
                              "normalised to its maximum")
    fig.update_layout(height=420)
    return fig


def channel_attribution_figure(attribution: np.ndarray, gates: np.ndarray, model: str, block: str, cls: str
                               ) -> go.Figure:
    """Gradient x gate per SE channel of one block for one class score, channels sorted by attribution."""
    order = np.argsort(-attribution)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("attribution s·∂score/∂s", "gate s of this image"))
    x = [str(c) for c in order]
    fig.add_trace(go.Bar(x=x, y=attribution[order], marker_color=np.where(attribution[order] >= 0, "#2CA02C",
                                                                          "#D62728"),
                         name="attribution", hovertemplate="channel %{x}: %{y:.4f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=x, y=gates[order], marker_color="#7F7F7F", name="gate s",
                         hovertemplate="channel %{x}: s = %{y:.3f}<extra></extra>"), row=2, col=1)
    layout_title(fig, f"SE channel attribution — {model}: {block}, class '{cls}'",
                  f"{len(attribution)} channels, sorted by attribution; sum = {attribution.sum():.3f} "
                  "(gradient × activation at the gate, captum)")
    fig.update_xaxes(title="channel (sorted)", type="category", showticklabels=len(x) <= 64, row=2, col=1)
    fig.update_yaxes(title="attribution", row=1, col=1)
    fig.update_yaxes(title="s", range=[0, 1.05], row=2, col=1)
    fig.update_layout(height=520, showlegend=False)
    return fig
