"""What the Export page offers: figures and tables kept by the pages, each tagged with the selection it was made
from (model, weights, image set), so Export lists the current selection's results and never mixes models.

Pages call :func:`keep_figure` / :func:`keep_table` after drawing; Export calls :func:`current` and
:func:`earlier`. Exported files carry their provenance: figures as a line under the plot (``plots.stamp``),
tables as leading ``model``, ``weights`` and ``images`` columns.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from senet_viz.lru import LRU
from ui import selection as sidebar_selection
from ui.keys import images_key
from ui.memo import session_memo
from ui.selection import Selection

MAX_EARLIER_SELECTIONS = 4  # older selections kept for Export, the least recently used dropped first


@dataclass(frozen=True)
class Provenance:
    """Where a figure or table comes from."""

    model: str
    weights: str
    images: str  # e.g. "Upload by class: 4 files in 2 classes"
    image_set: str  # digest of the image keys and labels: the same files give the same digest

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.weights, self.image_set)

    @property
    def text(self) -> str:
        return f"model {self.model} · weights {self.weights} · images: {self.images} (set {self.image_set})"

    def columns(self) -> dict[str, str]:
        return {"model": self.model, "weights": self.weights, "images": f"{self.images} (set {self.image_set})"}


def provenance(selection: Selection | None = None) -> Provenance | None:
    """The provenance of the sidebar's current selection (None without a model)."""
    selection = selection or sidebar_selection.current()
    if selection.bundle is not None:
        prov = selection.bundle.provenance
        digest = hashlib.sha256(json.dumps(prov, sort_keys=True, default=str).encode()).hexdigest()[:10]
        weights = f"{prov.get('weights', '?')} (sha256 {str(prov.get('weights_digest', '?'))[:12]})"
        return Provenance(selection.bundle.model, weights, f"analysis file: {selection.bundle.label}", digest)
    model = selection.model
    if model is None:
        return None
    weights = model.weights_source if model.weights_id in ("random", "") else \
        f"{model.weights_source} (sha256 {model.weights_id[:12]})"
    images, digest = "none", "-"
    if selection.images is not None:
        items = selection.images.items
        digest = images_key(selection.images)[:10]  # the identity that also keys the shared results
        n_classes = len(selection.images.classes_present())
        where = f"{selection.source} ({selection.origin})" if selection.origin else selection.source
        images = f"{where}: {len(items)} files in {n_classes} class{'es' if n_classes != 1 else ''}"
    return Provenance(model.name, weights, images, digest)


def _store() -> LRU:
    """This session's results by selection (provenance key), least recently used first."""
    return session_memo("exports", 1 + MAX_EARLIER_SELECTIONS)


def _bucket(prov: Provenance) -> dict:
    store = _store()
    bucket = store.get(prov.key)  # a use: the selection becomes the most recent
    if bucket is None:
        bucket = {"provenance": prov, "figures": {}, "tables": {}}
        store.put(prov.key, bucket)
    bucket["provenance"] = prov  # the same images reached another way (a folder typed, then the samples): say so
    return bucket


def keep_figure(name: str, fig: go.Figure) -> None:
    """Offer ``fig`` on the Export page under ``name``, tagged with the current selection."""
    prov = provenance()
    if prov is not None:
        _bucket(prov)["figures"][name] = fig


def keep_table(name: str, frame: pd.DataFrame) -> None:
    """Offer ``frame`` on the Export page under ``name``, tagged with the current selection."""
    prov = provenance()
    if prov is not None:
        _bucket(prov)["tables"][name] = frame


def current() -> dict | None:
    """The figures and tables of the current selection: ``{"provenance", "figures", "tables"}``."""
    prov = provenance()
    if prov is None:
        return None
    return _bucket(prov) if prov.key in _store() else {"provenance": prov, "figures": {}, "tables": {}}


def earlier() -> list[dict]:
    """Results of earlier selections (other model, weights or images), most recent first."""
    prov = provenance()
    return [b for k, b in reversed(_store().items()) if prov is None or k != prov.key]


def stamped_table(frame: pd.DataFrame, prov: Provenance) -> pd.DataFrame:
    """``frame`` with the provenance as its first columns (an existing column of that name is kept as is)."""
    extra = {k: v for k, v in prov.columns().items() if k not in frame.columns}
    return pd.concat([pd.DataFrame(extra, index=frame.index), frame], axis=1) if extra else frame
