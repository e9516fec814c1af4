"""Which timm and torchvision architectures have channel gates, and how many of each kind, without weights.

:func:`gate_census` builds every architecture on the ``meta`` device (no memory, no weights) and counts its gates
by module structure (:func:`static_gates`); the result is cached as JSON under the cache folder
(``python -m senet_viz models --all``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import fx, nn
from torch.overrides import TorchFunctionMode

from senet_viz.gates.fx import is_sigmoid_node, trace_gates
from senet_viz.gates.kinds import NOT_SE, Candidate, class_name, gate_child
from senet_viz.paths import cache_dir

#: Factory calls of fewer elements stay real in :func:`build_on_meta`'s fallback (index lists, drop-path rates).
SMALL_TENSOR = 1 << 16


def static_gates(model: nn.Module) -> tuple[dict[str, int], dict[str, int], int]:
    """Channel gates of ``model`` counted by module structure alone, without a forward pass (so a model built on
    the ``meta`` device works): (gates per kind, look-alikes that are not SE per class, how many of the gates were
    matched structurally rather than by a known class). Structural matches are counted under their kind like
    known classes; a forward pass (:func:`senet_viz.gates.blocks.discover_se_blocks`) may still reject one.
    GlobalContext without ``fuse_scale`` and GatherExcite with a local extent have no per-channel gate."""
    kinds: dict[str, int] = {}
    not_se: dict[str, int] = {}
    structural = 0
    for _, module in model.named_modules():
        found = gate_child(module)
        cls = class_name(module)
        if cls in NOT_SE:
            not_se[cls] = not_se.get(cls, 0) + 1
        if not isinstance(found, Candidate):
            continue
        if found.gate_kind == "global_context" and getattr(module, "mlp_scale", True) is None:
            not_se["GlobalContext(fuse_add only)"] = not_se.get("GlobalContext(fuse_add only)", 0) + 1
            continue
        if found.gate_kind == "gather_excite" and getattr(module, "extent", 0):
            not_se["GatherExcite(local extent)"] = not_se.get("GatherExcite(local extent)", 0) + 1
            continue
        kinds[found.gate_kind] = kinds.get(found.gate_kind, 0) + 1
        structural += found.source == "structural"
    return kinds, not_se, structural


class _LargeOnMeta(TorchFunctionMode):
    """Tensor factories without a device make small tensors on the CPU and the rest on ``meta``: for constructors
    that read values (``torch.linspace(...).tolist()``), which a plain ``torch.device("meta")`` refuses. A torch
    function mode is per thread: other threads (other sessions) build as usual meanwhile."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if kwargs.get("device") is None and func in _factories():
            out = func(*args, **{**kwargs, "device": "meta"})  # the shape, for free
            return out if out.numel() >= SMALL_TENSOR else func(*args, **kwargs)
        return func(*args, **kwargs)


def _factories() -> set:
    from torch.utils._device import _device_constructors  # the functions torch.device(...) as a context redirects

    return _device_constructors()


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` with its parameters and buffers on the ``meta`` device: shapes and dtypes without memory or
    initialisation. A constructor that reads tensor values is built with only tensors under
    :data:`SMALL_TENSOR` elements real (then moved to ``meta`` too); what still fails raises."""
    try:
        with torch.device("meta"):
            return build()
    except (NotImplementedError, RuntimeError):
        pass
    with _LargeOnMeta():
        model = build()
    return model.to("meta")


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers (a meta model: what it will take once real)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def looked_alike(model: nn.Module) -> dict[str, str]:
    """Modules that look like gate modules but are not (split attention, ...), by path, with the reason: what a
    refusal without a forward pass can name as considered."""
    found = ((path, gate_child(module)) for path, module in model.named_modules())
    return {path: why for path, why in found if isinstance(why, str)}


def may_have_gates(model: nn.Module, input_size: tuple[int, int, int]) -> tuple[bool, str]:
    """Whether a (meta) model may have channel gates, without weights or real memory, and how that was told.

    False only when it surely has none: no gate module by structure (:func:`static_gates`) and either no sigmoid
    in its ``torch.fx`` graph or, after shape propagation on ``meta``, no sigmoid that gates channels. True when a
    gate module is there (a forward pass with weights makes the final call) or when it cannot be told this way
    (the graph cannot be traced, or does not run on ``meta``)."""
    kinds, _, _ = static_gates(model)
    if kinds:
        return True, f"{sum(kinds.values())} gate module(s) by structure"
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - untraceable: the real load exports it and decides
        return True, "no gate module; its graph cannot be traced without building it"
    if not any(is_sigmoid_node(node, gm) for node in gm.graph.nodes):
        return False, "no gate module and no sigmoid in its graph"
    _, found = trace_gates(gm, input_size, inplace=True)
    if found.blocks:
        return True, f"{len(found.blocks)} inline gate(s) in its graph"
    if "<fx>" in found.rejected:
        return True, "no gate module; its graph does not run without weights"
    return False, "no gate module, and no sigmoid in its graph gates channels"


def census_file() -> Path:
    """The census cache, one per timm / torchvision version, under :func:`senet_viz.paths.cache_dir`."""
    import timm
    import torchvision

    return cache_dir() / f"gate_census_timm-{timm.__version__}_torchvision-{torchvision.__version__}.json"


def _census_one(name: str) -> dict:
    import timm
    import torchvision

    source, _, arch = name.partition(":")

    def build() -> nn.Module:
        if source == "torchvision":
            return torchvision.models.get_model(arch, weights=None)
        return timm.create_model(arch, pretrained=False)

    device = "meta"
    try:
        with torch.device("meta"):
            model = build()
    except (NotImplementedError, RuntimeError):  # an __init__ that reads tensor values: build it for real
        device = "cpu"
        model = build()
    kinds, not_se, structural = static_gates(model)
    return {"source": source, "gates": sum(kinds.values()), "kinds": kinds, "not_se": not_se,
            "structural": structural, "device": device}


def census_names() -> list[str]:
    """Every architecture the census covers: ``timm:<name>`` for ``timm.list_models()`` and
    ``torchvision:<name>`` for torchvision's classification models."""
    import timm
    import torchvision

    return ([f"timm:{n}" for n in timm.list_models()]
            + [f"torchvision:{n}" for n in torchvision.models.list_models(module=torchvision.models)])


def gate_census(names: Iterable[str] | None = None, *, refresh: bool = False, cache: Path | str | None = None,
                progress=None) -> dict:
    """Which timm and torchvision architectures have channel gates, of which kinds and how many, without weights.

    Each model is built on the ``meta`` device (no memory, no initialisation; on the CPU when its constructor
    needs tensor values) and counted by :func:`static_gates`.
    Results are cached per architecture in a JSON file under the cache dir (``$SENET_VIZ_CACHE``, else
    ``~/.cache/senet_viz``), keyed by the timm and torchvision versions; ``names`` (``timm:<name>``,
    ``torchvision:<name>`` or a bare timm name) restricts the census, ``refresh`` rebuilds. ``progress(i, n, name)``
    is called per model built.

    Returns ``{"models": {name: {"source", "gates", "kinds", "not_se", "structural", "device"}} (only
    architectures with a gate or a look-alike; ``structural``: gates matched by structure, not by a known class;
    ``device``: "meta", or "cpu" for a constructor that reads tensor values), "errors": {name: message},
    "per_kind": {kind: {"models", "gates"}}, "not_se": {class: models}, "covered": architectures asked for,
    "built": built now (the others came from the cache), "seconds": time spent building now, "cache": path}``.
    A full census (about 1,450 architectures) takes a few minutes on a CPU; later calls read the cache.
    """
    wanted = census_names() if names is None else [n if ":" in n else f"timm:{n}" for n in names]
    path = Path(cache) if cache is not None else census_file()
    stored: dict[str, dict] = {}
    if path.exists() and not refresh:
        try:
            stored = json.loads(path.read_text()).get("entries", {})
        except (OSError, ValueError):
            stored = {}
    todo = [n for n in wanted if "structural" not in stored.get(n, {})]  # new, or failed before (retried)
    start = time.perf_counter()
    for i, name in enumerate(todo):
        try:
            stored[name] = _census_one(name)
        except Exception as error:  # noqa: BLE001 - one broken constructor must not stop the census
            stored[name] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
        if progress is not None:
            progress(i + 1, len(todo), name)
    seconds = time.perf_counter() - start
    if todo:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"entries": stored}, indent=0, sort_keys=True))
        os.replace(tmp, path)

    models, errors, per_kind, not_se = {}, {}, {}, {}
    for name in wanted:
        entry = stored[name]
        if "error" in entry:
            errors[name] = entry["error"]
            continue
        if entry["gates"] or entry["not_se"]:
            models[name] = entry
        for kind, count in entry["kinds"].items():
            agg = per_kind.setdefault(kind, {"models": 0, "gates": 0})
            agg["models"] += 1
            agg["gates"] += count
        for reason in entry["not_se"]:
            not_se[reason] = not_se.get(reason, 0) + 1
    return {"models": models, "errors": errors, "per_kind": per_kind, "not_se": not_se,
            "covered": len(wanted), "built": len(todo), "seconds": round(seconds, 1), "cache": str(path)}
