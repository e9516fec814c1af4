"""The sidebar's "Work from: An analysis file": analysis bundles opened from an upload or a server path, kept in the
session until closed. A bundle is a stranger's file: read by :func:`ui.bundles.open_bundle` (sizes checked before
anything is allocated, a typed path inside the data roots), its upload counted in the session's budget, and its
provenance shown as plain text."""

from __future__ import annotations

import hashlib

import streamlit as st

from senet_viz.analysis.bundle import Bundle, BundleError
from ui import uploads
from ui.bundles import open_bundle
from ui.text import plain
from ui.widgets import kept


def opened_bundles() -> dict[str, Bundle]:
    """The analysis files open in this session that can be read, by key."""
    out = {}
    for key, source in st.session_state.get("opened_bundles", {}).items():
        try:
            out[key] = open_bundle(source)
        except BundleError:
            continue
    return out


def pick() -> Bundle | None:
    """Open analysis bundles (written by `python -m senet_viz paper` or `stats --bundle`): an upload or a path on
    the server. Opened bundles are kept in the session, like uploaded images, until removed. Returns the chosen
    one (None while none is open)."""
    opened: dict[str, bytes | str] = st.session_state.setdefault("opened_bundles", {})
    upload = st.file_uploader("Analysis file (.senetviz.zip)", type=["zip"],
                              key=f"bundle_upload_{st.session_state.get('bundle_generation', 0)}",
                              help="written by `python -m senet_viz paper --out DIR` or `stats --bundle FILE`; up "
                                   f"to {st.get_option('server.maxUploadSize')} MB per file (server.maxUploadSize); "
                                   "only the bundle's known members are read, nothing in it is executed.")
    if upload is not None:
        data = upload.getvalue()
        uploads.release_widget_file(upload)  # kept once, here
        # An uploaded bundle's bytes stay in the session (to reopen it after the shared cache dropped it): they
        # count against the session's upload budget with its images.
        key = hashlib.sha256(data).hexdigest()[:16]
        images = st.session_state.get("uploaded_files", {})  # the sidebar's store of uploaded images
        used = uploads.used_bytes(images) + sum(len(v) for v in opened.values() if isinstance(v, bytes))
        budget = uploads.session_budget()
        if key not in opened and len(data) > budget - used:
            st.session_state["bundle_refused"] = uploads.budget_message(plain(upload.name), len(data), budget, used)
        else:
            opened.setdefault(key, data)
        st.session_state["bundle_generation"] = st.session_state.get("bundle_generation", 0) + 1
        st.rerun()
    if "bundle_refused" in st.session_state:
        st.error(st.session_state.pop("bundle_refused"))
    path = st.text_input("…or a path on the server", key=kept("bundle_path"), placeholder="/runs/imagenet.senetviz.zip")
    if path.strip():
        opened.setdefault(f"path:{path.strip()}", path.strip())
    bundles: dict[str, Bundle] = {}
    for key, source in list(opened.items()):
        try:
            bundles[key] = open_bundle(source)
        except BundleError as exc:
            # A path's message stands alone (the path is in its box): outside the data roots it is the same text
            # whether the file exists or not.
            st.error(plain(str(exc), None) if isinstance(source, str)
                     else f"Could not open the uploaded file: {plain(str(exc), None)}")
            opened.pop(key)  # a path stays in its box (and its error on screen) until the user changes it
    if not bundles:
        st.info("Open an analysis file to see its statistics without a model or images.")
        return None
    keys = list(bundles)
    chosen = st.selectbox("Analysis", keys, index=len(keys) - 1, key=kept("bundle_chosen"),
                          format_func=lambda k: bundles[k].label)
    prov = bundles[chosen].provenance
    # Written by whoever made the file: shown as plain text, never as Markdown (no image or link it names is
    # fetched by the viewer's browser).
    st.text(f"{prov.get('images', '')} · weights {prov.get('weights', '?')} · made by {prov.get('command', '?')} on "
            f"{prov.get('created', '?')}")
    if st.button("Close this analysis", icon=":material/close:", key="bundle_close"):
        opened.pop(chosen, None)
        st.rerun()
    return bundles[chosen]
