"""The Remove page's slim export: the network without the chosen SE blocks as a download (safetensors + JSON).

Built only on a button press, once per (model, weights, device, blocks, mode, and for mode mean the images the
gates are fitted on), and shared by every session like the other results (:func:`ui.memo.shared`); the download
is named after the model and the weights' digest and carries the same provenance as every export.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from senet_viz.analysis.slim import fit_means, save_slim, slim_network
from senet_viz.data.sources import ImageSet
from senet_viz.gates.kinds import SEBlock
from senet_viz.models.loaded import LoadedModel
from ui import exports
from ui.keys import images_key, model_key
from ui.memo import Task, shared, spinner_wait
from ui.text import plain

ACCURACY_NOTE = ("The accuracy shown above was measured on your images only (here, in this session), not on a "
                 "benchmark: check the slim network on your own validation data before you rely on it.")


@dataclass(frozen=True)
class SlimDownload:
    """A built slim network, ready to download."""

    data: bytes  # the zip: <name>_slim.safetensors, <name>_slim.json, PROVENANCE.txt
    file_name: str
    removed: tuple[dict, ...]
    params: int
    params_full: int
    n_calibration: int


def _build(loaded: LoadedModel, images: ImageSet, blocks: list[SEBlock], mode: str, provenance: str
           ) -> SlimDownload:
    means, n_calibration = (fit_means(loaded, images, blocks) if mode == "mean" else (None, 0))
    slim = slim_network(loaded, blocks, mode, means, n_calibration=n_calibration)
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        paths = save_slim(slim, loaded, tmp)
        for path in paths.values():
            zf.write(path, Path(path).name)
        zf.writestr("PROVENANCE.txt", f"{provenance}\n\n{ACCURACY_NOTE}\n\nLoad it back: python -m senet_viz "
                                      f"evaluate --model {loaded.name} --weights {paths['safetensors'].name} "
                                      "--images DIR (the JSON must stay beside the weights)\n")
        stem = paths["safetensors"].stem
    digest = loaded.weights_id[:12] if loaded.weights_id not in ("", "random") else "random"
    return SlimDownload(buffer.getvalue(), f"{stem}_{digest}_{mode}.zip", tuple(slim.removed), slim.params,
                        slim.params_full, n_calibration)


def slim_section(loaded: LoadedModel, images: ImageSet, blocks: list[SEBlock], mode: str) -> None:
    """A button that builds the slim network of ``blocks`` in ``mode`` and a download of it, with its note."""
    if not blocks:
        return
    st.subheader("Export the network without these SE blocks")
    traced = any(b.kind == "fx" for b in blocks)
    if traced:
        st.caption("This network's gates are written inline in its graph (a model file): there is no SE module to "
                   "take out, so no slim export.")
        return
    names = tuple(b.name for b in blocks)
    key = (*model_key(loaded), names, mode, images_key(images) if mode == "mean" else "")
    how = "removed (gate = 1)" if mode == "identity" else "frozen to their mean gate and folded into the layer " \
                                                          "before or after them where exact"
    st.caption(f"A real network with {', '.join(names)} {how}: safetensors weights and a JSON of what was removed; "
               "it loads back with the weights option of the sidebar or `--weights` (keep the JSON beside it).")
    if st.button("Build the slim network", key="slim_build"):
        st.session_state["slim_request"] = key
    if st.session_state.get("slim_request") != key:
        return
    prov = exports.provenance()
    text = prov.text if prov is not None else f"model {loaded.name}"

    def compute(_task: Task) -> SlimDownload:
        return _build(loaded, images, list(blocks), mode, text)

    try:
        built = shared("slim", key, compute, spinner_wait("Building the slim network ..."))
    except ValueError as exc:
        st.warning(f"Cannot build the slim network: {plain(str(exc), None)}")
        return
    st.download_button(f"Download {built.file_name}", built.data, built.file_name, "application/zip",
                       key="slim_download")
    folded = sum(r["how"].startswith("folded") for r in built.removed)
    scaled = sum(r["how"] == "scale" for r in built.removed)
    detail = (f"{folded} folded into a neighbouring layer, {scaled} kept as a per-channel scale" if mode == "mean"
              else "removed")
    st.caption(f"{len(built.removed)} SE block(s): {detail}; {built.params:,} parameters instead of "
               f"{built.params_full:,}" + (f"; mean gates fitted on {built.n_calibration} calibration images"
                                           if built.n_calibration else "") + f". {ACCURACY_NOTE}")
