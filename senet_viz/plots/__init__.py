"""Plotly figures of Squeeze-and-Excitation gates, built from the tidy frames of :mod:`senet_viz.analysis.stats`.

Every function takes plain DataFrames / arrays and returns a :class:`plotly.graph_objects.Figure`; nothing here
imports torch or streamlit (only drawing a sweep imports :mod:`senet_viz.analysis.ablation`, for its Pareto front). The
figures follow the "role of excitation" analysis of the SENet paper (Hu et al., CVPR 2018 / TPAMI 2019, Fig. 6
and Fig. 7).

Input frames (see ``stats.py``):

* ``channels``: one row per (model, block, class, channel) with ``model``, ``block``, ``stage``, ``order``,
  ``class`` (``"all"`` = every image), ``class_index``, ``channel``, ``count``, ``mean``, ``std``, ``min``,
  ``max`` and ``hist`` (counts of the gate values in equal bins over [0, 1]).
* ``indices``: one row per (model, block) with ``specificity``, ``saturation`` and the other indices.

Large statistics (e.g. SE-ResNet-50 over the 1,000 ImageNet classes: 15 million class-channel rows) are never
drawn from a full frame: pass the bounded views of ``GateStats`` instead. :func:`fig6_matrix` takes each block's
class x channel means (``stats.class_means(block, classes, include_all=True)``), ``fig7`` takes
``stats.frame([block], [cls], hist=False)`` (means and std only, no ``hist``/``min``/``max`` needed),
``distributions`` also takes ``stats.block_frame(blocks, classes)`` (one row per block and class, the class's
histogram pooled over channels), :func:`heatmap_matrix` takes the class x channel means of
``stats.class_means(block, classes)``, and ``image_percentiles`` falls back to the all-image histogram (and says
so) where a class's per-channel histograms are not kept (``hist`` None). ``all_classes=`` (every class of the
statistics) keeps a class's colour the same however few classes a bounded frame holds.

Conventions shared by all figures: a class keeps its colour everywhere (:func:`class_colors`), the all-class
reference is dark grey and dashed, gate axes span 0..1, titles name the model, the block(s) and the classes with
their number of images, and unknown block / class / model names raise ``ValueError`` listing the valid ones.
A frame holding several models needs ``model=...``.

Modules, by subject (every public name is importable from ``senet_viz.plots``): :mod:`.common` (conventions and
input checks shared by the figures), :mod:`.gates` (Fig. 6, Fig. 7, heatmap), :mod:`.distributions` (per-block
distributions, one image's percentiles), :mod:`.depth` (indices by depth), :mod:`.ablation` (sweep, cost),
:mod:`.attribution` (Grad-CAM, channel attribution), :mod:`.channels` (channel selectivity; from its own module)
and :mod:`.export` (provenance stamp, HTML / PNG files).
"""

from __future__ import annotations

from senet_viz.plots.ablation import cost_figure, format_macs, sweep_figure
from senet_viz.plots.attribution import channel_attribution_figure, gradcam_figure
from senet_viz.plots.common import (
    ALL_CLASS,
    ALL_COLOR,
    BLOCK_COLUMNS,
    CHANNEL_COLUMNS,
    GATE_AXIS,
    INDEX_COLUMNS,
    MEAN_COLUMNS,
    PAPER,
    class_colors,
)
from senet_viz.plots.depth import depth_profile
from senet_viz.plots.distributions import channel_percentiles, distributions, image_percentiles
from senet_viz.plots.export import EXPORT_HEIGHT, EXPORT_SCALE, EXPORT_WIDTH, find_chromium, save_figure, stamp
from senet_viz.plots.gates import (
    fig6,
    fig6_matrix,
    fig7,
    heatmap,
    heatmap_matrix,
    paper_preset_blocks,
    sample_channels,
)

__all__ = [
    "ALL_CLASS",
    "ALL_COLOR",
    "BLOCK_COLUMNS",
    "CHANNEL_COLUMNS",
    "EXPORT_HEIGHT",
    "EXPORT_SCALE",
    "EXPORT_WIDTH",
    "GATE_AXIS",
    "INDEX_COLUMNS",
    "MEAN_COLUMNS",
    "PAPER",
    "channel_attribution_figure",
    "channel_percentiles",
    "class_colors",
    "cost_figure",
    "depth_profile",
    "distributions",
    "fig6",
    "fig6_matrix",
    "fig7",
    "find_chromium",
    "format_macs",
    "gradcam_figure",
    "heatmap",
    "heatmap_matrix",
    "image_percentiles",
    "paper_preset_blocks",
    "sample_channels",
    "save_figure",
    "stamp",
    "sweep_figure",
]
