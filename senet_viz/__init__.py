"""senet-viz: look inside Squeeze-and-Excitation channel attention (the library; it never imports streamlit).

The names a notebook needs, from the modules that define them (README, "Python API")::

    import senet_viz as sv
    net = sv.load_model("se_resnet_fmnist")
    result = sv.run_model(net, sv.folder_source("assets/fmnist_samples", class_names=net.class_names))

Each name is imported on first use (PEP 562), so ``import senet_viz`` itself loads neither torch nor pandas.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    # models: load a zoo network, a timm / torchvision name or a model file, with its SE blocks
    "load_model": "senet_viz.models.zoo",
    "LoadedModel": "senet_viz.models.loaded",
    # gates: find and select SE blocks, record or replace their gates
    "SEBlock": "senet_viz.gates.kinds",
    "find_se_blocks": "senet_viz.gates.blocks",
    "select_blocks": "senet_viz.gates.blocks",
    "capture": "senet_viz.gates.capture",
    "ablate": "senet_viz.gates.capture",
    # images and batched runs
    "ImageSet": "senet_viz.data.sources",
    "folder_source": "senet_viz.data.folders",
    "RunOptions": "senet_viz.inference.run",
    "Result": "senet_viz.inference.run",
    "run_model": "senet_viz.inference.run",
    # statistics, figures, analysis files
    "GateStats": "senet_viz.analysis.stats",
    "stats_from_parquet": "senet_viz.analysis.stats",
    "fig6": "senet_viz.plots.gates",
    "fig7": "senet_viz.plots.gates",
    "depth_profile": "senet_viz.plots.depth",
    "save_figure": "senet_viz.plots.export",
    "Bundle": "senet_viz.analysis.bundle",
    "read_bundle": "senet_viz.analysis.bundle",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> object:
    module = _PUBLIC.get(name)
    if module is None:  # also how `from senet_viz import plots` falls through to the subpackage
        raise AttributeError(f"module 'senet_viz' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access does not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
