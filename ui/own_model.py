"""The sidebar's "Your own model": a user's model file, uploaded or on the server, with the input size,
normalisation and class names the file does not carry.

A browser user is a stranger (:mod:`ui.serving`), so the file is loaded with ``ModelFileOptions(untrusted=True)``:
only the formats that carry no code are open, ONNX and a ``.pt2`` saved by ``torch.export.save`` without pickles
(:func:`senet_viz.models.pt2_check.pt2_code_risks` checks the archive before torch reads it). TorchScript, a ``.pt2``
with
pickled weights or objects, and Python entry points (``file.py:build``) run code in the server; they load only
when the server was started with ``SENET_VIZ_ALLOW_CODE=1``. Typed paths (the model, an entry point's ``.py``,
its weights) must lie inside the operator's data roots (:func:`ui.serving.server_path`). Errors are shown with
what to do, anything the user wrote is shown as text, never as Markdown, and the app keeps serving.
"""

from __future__ import annotations

import re

import streamlit as st

from senet_viz.models.loaded import NoGatesError
from senet_viz.models.model_files import ModelFileOptions
from senet_viz.models.preprocess import parse_numbers
from senet_viz.paths import OutsideRootsError
from ui import uploads
from ui.model_cache import get_model
from ui.selection import Selection
from ui.serving import ALLOW_CODE_ENV, allow_code, server_path
from ui.text import plain

MODEL_FILE_TYPES = ["pt", "pth", "ts", "jit", "torchscript", "pt2", "onnx"]
#: ``target:callable`` typed into the path box: a Python entry point (decided by the text, not by the disk).
_ENTRY = re.compile(r"^(?P<target>.+?):(?P<attr>[A-Za-z_][\w.]*)$")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
OPEN_FORMATS = ("ONNX (.onnx) and torch.export (.pt2) files saved without pickles load here; TorchScript "
                "(.pt/.ts), a .pt2 with pickled weights or objects, and Python code run code in the server and "
                f"load only when it was started with {ALLOW_CODE_ENV}=1.")


def _file_options(code: bool) -> ModelFileOptions:
    """What the model file does not say: input size, resize, class names, normalisation (sidebar fields); the
    loading policy of a browser user (untrusted; code only when the server allows it)."""
    with st.expander("Input and classes", icon=":material/tune:"):
        size_text = st.text_input("Input size C,H,W", key="own_input_size",
                                  placeholder="the file's own, else 3,224,224",
                                  help="1 channel: images are read as grey")
        resize_text = st.text_input("Resize (short side before the center crop)", key="own_resize",
                                    placeholder="H / 0.875")
        mean_text = st.text_input("Mean", key="own_mean", placeholder="ImageNet's (0.5 for 1 channel)")
        std_text = st.text_input("Std", key="own_std", placeholder="ImageNet's (0.5 for 1 channel)")
        classes = st.file_uploader("Class names (.txt, one per line)", type=["txt"], key="own_classes_upload",
                                   help="default: the file's labels (ONNX metadata), else class 0..N-1")
        if classes is not None:
            names = tuple(line.strip() for line in classes.getvalue().decode("utf-8", "replace").splitlines()
                          if line.strip())
            st.session_state["own_classes"] = (classes.name, names)
        kept = st.session_state.get("own_classes")
        if kept:
            st.caption(f"{len(kept[1])} class names from {plain(kept[0])}")
            if st.button("Forget the class names", key="own_classes_forget"):
                st.session_state.pop("own_classes", None)
                st.rerun()
    size = parse_numbers(size_text, "Input size", int)
    if size is not None and len(size) != 3:
        raise ValueError(f"Input size takes C,H,W (e.g. 3,224,224), not {size_text!r}")
    resize = parse_numbers(resize_text, "Resize", int)
    return ModelFileOptions(input_size=size, resize=resize[0] if resize else None,
                                class_names=kept[1] if kept else None, mean=parse_numbers(mean_text, "Mean"),
                                std=parse_numbers(std_text, "Std"), allow_code=code, untrusted=True)


def _server_target(text: str) -> str:
    """A typed model path or entry point with its file resolved inside the data roots (OutsideRootsError, one
    message whether the file exists or not, otherwise). ``package.module:build`` names no file: it is kept (the
    loader refuses it unless the server allows code)."""
    match = _ENTRY.match(text)
    if match and not _DRIVE.match(text) and not text.lower().endswith(tuple(f".{t}" for t in MODEL_FILE_TYPES)):
        target, attr = match["target"], match["attr"]
        if target.endswith(".py") or "/" in target or "\\" in target:
            return f"{server_path(target, 'Python file')}:{attr}"
        return text
    return str(server_path(text, "model file"))


def _load_hint(exc: Exception) -> str:
    from senet_viz.models.loaders import CodeNotAllowedError

    if isinstance(exc, CodeNotAllowedError):
        return (f"Formats that carry code load only on a server started with {ALLOW_CODE_ENV}=1. Safe here: ONNX "
                "(torch.onnx.export) and a .pt2 saved by torch.export.save without pickles.")
    if isinstance(exc, NoGatesError):
        return "senet-viz looks at channel gates (SE, ESE, ECA, GatherExcite, GlobalContext, inline sigmoid gates)."
    return ("Check the input size and class names under Input and classes; ONNX: a float model with a free or 1 "
            "batch dimension; torch.export: torch.export.save(torch.export.export(model, (x,)), path).")


def _refuse(selection: Selection, message: str, hint: str = "") -> None:
    """Show a refusal: ``message`` may quote what the user wrote, so it is shown as text (escaped)."""
    selection.model_error = plain(message, limit=800)  # ui.common shows it as Markdown
    st.error(selection.model_error + (f"\n\n{hint}" if hint else ""))


def render(selection: Selection, device: str) -> None:
    """A user's own network: an uploaded (or server-side) model file, loaded as a stranger's (see the module
    docstring); a Python entry point only when the server allows code (SENET_VIZ_ALLOW_CODE=1)."""
    code = allow_code()
    st.caption(OPEN_FORMATS + (" This server allows code: TorchScript, any .pt2 and Python entry points "
                               "(file.py:build) load." if code else "") + " Gates are found in the graph.")
    upload = st.file_uploader("Model file", type=MODEL_FILE_TYPES, key="own_model_upload",
                              help=f"Up to {st.get_option('server.maxUploadSize')} MB (server.maxUploadSize). "
                                   + OPEN_FORMATS)
    if upload is not None:
        try:
            path = uploads.save_upload(upload.name, upload.getvalue(), keep_name=True)
            st.session_state["own_model_file"] = (upload.name, str(path))
        except ValueError as exc:  # over the server's disk budget for uploaded files
            selection.model_error = plain(f"{upload.name} was not kept: {exc}", None)
            st.error(selection.model_error)
            return
    label = "…or a path on the server" + (", or file.py:build / package.module:build" if code else "")
    path_text = st.text_input(label, key="own_model_path",
                              placeholder="examples/se_vgg16.py:build" if code else "models/my_model.onnx",
                              help="inside the folders the server's operator opened to the app "
                                   "(SENET_VIZ_DATA_ROOTS, the folder it was started in, the sample folders)")
    weights_text = ""
    if code:
        weights_text = st.text_input("Weights for an entry point (state dict, optional)", key="own_weights_path",
                                     placeholder="weights/my_model.safetensors")
    kept = st.session_state.get("own_model_file")
    try:
        options = _file_options(code)
    except ValueError as exc:
        _refuse(selection, str(exc))
        return
    typed = path_text.strip()
    try:
        weights = str(server_path(weights_text.strip(), "weights file")) if weights_text.strip() else None
        if typed:
            target, shown = _server_target(typed), typed
        elif kept:
            target, shown = kept[1], kept[0]
        else:
            selection.model_error = "Upload a model file (or give its path) in the sidebar."
            st.info(selection.model_error)
            return
    except OutsideRootsError as exc:
        _refuse(selection, str(exc))
        return
    try:
        loaded = get_model(target, weights, device, options)
    except Exception as exc:  # noqa: BLE001 - a user's file: show what went wrong and keep serving
        _refuse(selection, f"Could not load {shown}: {exc}", _load_hint(exc))
        return
    selection.model = loaded
    info = loaded.file_info
    kinds = sorted({b.gate_kind for b in loaded.blocks})
    n = len(loaded.blocks)
    st.caption(f"{plain(shown)} · {getattr(info, 'format', 'file')} · {n} gate{'s' * (n != 1)} "
               f"({', '.join(kinds)}) · {loaded.num_classes} classes · input "
               f"{'x'.join(map(str, loaded.input_size))}")
    if loaded.rejected:
        with st.expander(f"{len(loaded.rejected)} look-alike(s) not treated as gates"):
            for path, why in loaded.rejected.items():
                st.text(f"- {path or '<model>'}: {why}")
