"""The sidebar's "Your own model": a user's TorchScript, ``torch.export`` or ONNX file, uploaded or on the server,
loaded without running the user's code (:mod:`senet_viz.model_files`), with the input size, normalisation and class
names the file does not carry. A Python entry point (``file.py:build``) runs the user's code in the server, so it
is offered only when the server was started with ``SENET_VIZ_ALLOW_CODE=1``. Errors are shown with what to do, and
the app keeps serving.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import streamlit as st

from senet_viz import zoo
from ui import state

if TYPE_CHECKING:
    from ui.sidebar import Selection

#: ``SENET_VIZ_ALLOW_CODE=1`` in the server's environment offers Python entry points (file.py:build) under "Your
#: own model": loading one runs that code in the server with its permissions, so it is off unless asked for.
ALLOW_CODE_ENV = "SENET_VIZ_ALLOW_CODE"
MODEL_FILE_TYPES = ["pt", "pth", "ts", "jit", "torchscript", "pt2", "onnx"]


def allow_code() -> bool:
    """Whether this server offers Python entry points (``SENET_VIZ_ALLOW_CODE=1``)."""
    return os.environ.get(ALLOW_CODE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _numbers(text: str, label: str, kind: type = float) -> tuple | None:
    """A comma-separated field (``3,224,224``, ``0.5,0.5,0.5``) as a tuple; None when empty."""
    if not text.strip():
        return None
    try:
        return tuple(kind(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{label} takes comma-separated numbers, not {text!r}") from None


def _file_options(code: bool) -> zoo.ModelFileOptions:
    """What the model file does not say: input size, resize, class names, normalisation (sidebar fields)."""
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
            st.caption(f"{len(kept[1])} class names from {kept[0]}")
            if st.button("Forget the class names", key="own_classes_forget"):
                st.session_state.pop("own_classes", None)
                st.rerun()
    size = _numbers(size_text, "Input size", int)
    if size is not None and len(size) != 3:
        raise ValueError(f"Input size takes C,H,W (e.g. 3,224,224), not {size_text!r}")
    resize = _numbers(resize_text, "Resize", int)
    return zoo.ModelFileOptions(input_size=size, resize=resize[0] if resize else None,
                                class_names=kept[1] if kept else None, mean=_numbers(mean_text, "Mean"),
                                std=_numbers(std_text, "Std"), allow_code=code)


def _load_hint(exc: Exception) -> str:
    from senet_viz.loaders import CodeNotAllowedError

    if isinstance(exc, CodeNotAllowedError):
        return (f"Python entry points run code in the server: start it with {ALLOW_CODE_ENV}=1 to allow them, or "
                "upload a TorchScript / torch.export / ONNX file instead.")
    if isinstance(exc, zoo.NoGatesError):
        return "senet-viz looks at channel gates (SE, ESE, ECA, GatherExcite, GlobalContext, inline sigmoid gates)."
    return ("Check the input size and class names under Input and classes; TorchScript: torch.jit.script(model)."
            "save(path); ONNX: a float model with a free or 1 batch dimension.")


def render(selection: Selection, device: str) -> None:
    """A user's own network: an uploaded (or server-side) TorchScript, torch.export or ONNX file, loaded without
    running the user's code; a Python entry point only when the server allows code (SENET_VIZ_ALLOW_CODE=1)."""
    code = allow_code()
    st.caption("A TorchScript (.pt/.ts), torch.export (.pt2) or ONNX (.onnx) file: loaded without running any code "
               "of yours; its gates are found in the graph."
               + (" Python entry points (file.py:build) are allowed on this server." if code else ""))
    upload = st.file_uploader("Model file", type=MODEL_FILE_TYPES, key="own_model_upload",
                              help=f"Up to {st.get_option('server.maxUploadSize')} MB (server.maxUploadSize). "
                                   "TorchScript, torch.export and ONNX files are loaded as graphs: no Python code "
                                   "of yours runs.")
    if upload is not None:
        path = state.save_upload(upload.name, upload.getvalue(), keep_name=True)
        st.session_state["own_model_file"] = (upload.name, str(path))
    label = "…or a path on the server" + (", or file.py:build / package.module:build" if code else "")
    path_text = st.text_input(label, key="own_model_path",
                              placeholder="examples/se_vgg16.py:build" if code else "/path/to/model.onnx")
    weights: str | None = None
    if code:
        weights_text = st.text_input("Weights for an entry point (state dict, optional)", key="own_weights_path",
                                     placeholder="/path/to/weights.safetensors")
        weights = weights_text.strip() or None
    kept = st.session_state.get("own_model_file")
    target, shown = (path_text.strip(), path_text.strip()) if path_text.strip() else \
        ((kept[1], kept[0]) if kept else (None, None))
    try:
        options = _file_options(code)
    except ValueError as exc:
        selection.model_error = str(exc)
        st.error(str(exc))
        return
    if target is None:
        selection.model_error = "Upload a model file (or give its path) in the sidebar."
        st.info(selection.model_error)
        return
    try:
        loaded = state.get_model(target, weights, device, options)
    except Exception as exc:  # noqa: BLE001 - a user's file: show what went wrong and keep serving
        selection.model_error = f"Could not load {shown}: {exc}"
        st.error(f"Could not load {shown}: {exc}\n\n{_load_hint(exc)}")
        return
    selection.model = loaded
    info = loaded.file_info
    kinds = sorted({b.gate_kind for b in loaded.blocks})
    n = len(loaded.blocks)
    st.caption(f"{shown} · {getattr(info, 'format', 'file')} · {n} gate{'s' * (n != 1)} ({', '.join(kinds)}) · "
               f"{loaded.num_classes} classes · input {'x'.join(map(str, loaded.input_size))}")
    if loaded.rejected:
        with st.expander(f"{len(loaded.rejected)} look-alike(s) not treated as gates"):
            for path, why in loaded.rejected.items():
                st.markdown(f"- `{path or '<model>'}`: {why}")
