"""Glue of the Channels page (app_pages/channels.py): where its gates come from (this run, or an ``extract`` Parquet
file on the server), the click-through from Compare classes' charts, and the shared pre-gate map computation.

Computation lives in :mod:`senet_viz.analysis.channels`, :mod:`senet_viz.analysis.exemplars` and
:mod:`senet_viz.analysis.channel_maps`; this
module decides which to call and caches what a rerun would otherwise redo.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from senet_viz.analysis import channels, exemplars
from senet_viz.analysis.stats import GateStats
from senet_viz.data.decode import ImageDecodeError, decode_image
from senet_viz.data.store import read_meta
from senet_viz.models.loaded import LoadedModel
from senet_viz.paths import OutsideRootsError, file_stamp
from ui import results
from ui.common import need_analysis
from ui.keys import images_key, model_key
from ui.memo import session_memo
from ui.selection import current
from ui.serving import server_path
from ui.text import plain
from ui.widgets import per_model

PAGE = "app_pages/channels.py"
SOURCES = ("This run", "An extract file (Parquet on the server)")
THUMB_PX = 112


@dataclass
class Source:
    """What the page reads: statistics for selectivity, and per-image gates for exemplars and distributions."""

    key: tuple  # names the content (model, images or file, grouping): memo key
    model: str
    stats: GateStats
    grouping: str  # "labels" or "predicted class"
    blocks: dict[str, int]  # name -> channels, in depth order
    class_names: list[str]  # names of the indices the statistics group by (labels, or predictions)
    # (block, k, channel) -> exemplars holding at least that channel; None: no per-image gates (``missing`` says why)
    exemplars: Callable[[str, int, int], exemplars.Exemplars] | None
    values: Callable[[str, int], pd.DataFrame] | None  # (block, channel) -> rows with label, pred, gate
    image: Callable[[str], Image.Image | None]  # image key -> the image, or None when it cannot be found
    loaded: LoadedModel | None  # the network for pre-gate maps (None: not available for this source)
    missing: str = ""  # why there are no per-image gates
    pred_names: list[str] | None = None  # the model's classes, naming predictions (None: unknown, not shown)

    def classes_of(self, values: pd.DataFrame) -> pd.Series:
        """The class each row is grouped under (as the statistics group it)."""
        column = "pred" if self.grouping == "predicted class" else "label"
        names = self.class_names
        return values[column].map(lambda k: names[k] if 0 <= k < len(names) else "(no label)")


def _live() -> Source:
    selection, analysis = need_analysis()
    result, model = analysis.result, selection.model
    missing = "" if result.gates else (
        f"This run has {result.n:,} images: per-image gates are kept for at most {results.KEEP_GATES_LIMIT:,} (the "
        "selectivity above covers every image). For exemplars over a large set, extract the gates (`python -m "
        "senet_viz extract ... --out gates.parquet`) and open the file here, or use `python -m senet_viz channels`.")
    items = {it.key: it for it in selection.images.items}

    def image(key: str) -> Image.Image | None:
        try:
            return items[key].load()
        except (KeyError, ImageDecodeError):
            return None

    grouping = analysis.grouping
    names = list(model.class_names) if grouping == "predicted class" else list(selection.images.class_names)
    return Source(key=(*model_key(model), images_key(selection.images), grouping), model=model.name,
                  stats=analysis.stats, grouping=grouping, blocks={b.name: b.channels for b in model.blocks},
                  class_names=names, pred_names=list(model.class_names),
                  exemplars=None if missing else
                  lambda block, k, channel: exemplars.exemplars_from_result(result, block, k, [channel]),
                  values=None if missing else lambda block, channel: exemplars.channel_values(result, block, channel),
                  image=image, loaded=model, missing=missing)


@st.cache_resource(max_entries=4, show_spinner="Reading class statistics from the extract file ...")
def _extract_stats(path: str, stamp: tuple, by: str) -> GateStats:
    return channels.stats_for_extract(path, by=by)


@st.cache_resource(max_entries=8, show_spinner="Searching the extract file for exemplars ...")
def _extract_exemplars(path: str, stamp: tuple, block: str, k: int) -> exemplars.Exemplars:
    # Every channel of the block in one streamed pass (2 k rows per channel kept): another channel is then free.
    return exemplars.exemplars_from_extract(path, block, k)


@st.cache_data(max_entries=32, show_spinner="Reading the channel's gates ...")
def _extract_values(path: str, stamp: tuple, block: str, channel: int) -> pd.DataFrame:
    return exemplars.channel_values_from_extract(path, block, channel)


def _from_extract() -> Source:
    path_text = st.text_input("Extract file on the server (`python -m senet_viz extract ... --out X.parquet`)",
                              key="channels_extract", placeholder="/path/to/gates.parquet").strip()
    folder_text = st.text_input("Folder of its images (what `extract --images` read; the file stores their "
                                "relative paths)", key="channels_images").strip()
    by = st.radio("Group images by", ["labels", "prediction"], horizontal=True, key="channels_extract_by")
    if not path_text:
        st.info("Give the path of an extract file to search it.")
        st.stop()
    try:  # both typed paths lie inside the operator's roots (symlinks followed; one answer outside)
        path = server_path(path_text, "extract file")
        folder = server_path(folder_text, "image folder") if folder_text else None
    except OutsideRootsError as exc:
        st.error(str(exc))
        st.stop()
    try:
        meta = read_meta(path)
        stamp = file_stamp(path)
    except (OSError, KeyError, ValueError) as exc:
        st.error(plain(f"Cannot read {path} as an extract file: {exc}", None))  # quotes the typed path
        st.stop()
    model = current().model
    loaded = model if model is not None and model.name == meta["model"] else None

    def image(key: str) -> Image.Image | None:
        if folder is None:
            return None
        try:  # a key is the file's word ('../..' or a symlink must not lead out of the roots)
            return decode_image(server_path(folder / key, "image"))
        except (ImageDecodeError, OSError, OutsideRootsError):
            return None

    where = str(path.resolve())
    # A prediction indexes the model's classes, not the image set's: from the network here, else the file's record.
    model_names = list(loaded.class_names) if loaded is not None else meta.get("model_class_names")
    return Source(key=("extract", where, stamp, by), model=meta["model"],
                  stats=_extract_stats(where, stamp, by), grouping="labels" if by == "labels" else "predicted class",
                  blocks={b["name"]: int(b["channels"]) for b in meta["blocks"]},
                  class_names=list(meta.get("class_names") or []),
                  pred_names=list(model_names) if model_names else None,
                  exemplars=lambda block, k, channel: _extract_exemplars(where, stamp, block, k),
                  values=lambda block, channel: _extract_values(where, stamp, block, channel),
                  image=image, loaded=loaded)


def source() -> Source:
    """The page's source, as the "Gates from" radio says."""
    chosen = st.radio("Gates from", SOURCES, horizontal=True, key="channels_source")
    return _live() if chosen == SOURCES[0] else _from_extract()


# ------------------------------------------------------------------------------------------ cached tables


def summary(src: Source) -> pd.DataFrame:
    """Per-block selectivity distribution of ``src`` (made once per source in this session)."""
    memo = session_memo("channels_summary", 4)
    found = memo.get(src.key)
    if found is None:
        found = channels.block_summary(src.stats, list(src.blocks))
        memo.put(src.key, found)
    return found


def channel_table(src: Source, block: str) -> pd.DataFrame:
    memo = session_memo("channels_tables", 16)
    found = memo.get((*src.key, block))
    if found is None:
        found = channels.channel_table(src.stats, block)
        memo.put((*src.key, block), found)
    return found


# ------------------------------------------------------------------------------------------ arriving here


def widget_keys(model: str) -> tuple[str, str]:
    """The block and channel widget keys of the page, per model."""
    return per_model("channels_block", model), per_model("channels_channel", model)


def arrive(src: Source) -> None:
    """Apply ``?block=..&channel=..`` (a click-through from Compare classes) to the widgets, once, then drop it."""
    params = st.query_params
    if "block" not in params and "channel" not in params:
        return
    block, channel = params.get("block"), params.get("channel")
    block_key, channel_key = widget_keys(src.model)
    if block in src.blocks:
        st.session_state[block_key] = block
        try:
            value = int(channel) if channel is not None else None
        except ValueError:
            value = None
        if value is not None and 0 <= value < src.blocks[block]:
            st.session_state[channel_key] = value
    for name in ("block", "channel"):
        params.pop(name, None)


def apply_table_selection(event, table: pd.DataFrame, channel_key: str, block: str) -> None:
    """A row chosen in the table of most class-specific channels opens that channel (once per new choice)."""
    rows = list(getattr(getattr(event, "selection", None), "rows", []) or [])
    chosen = (block, int(table.iloc[rows[0]]["channel"])) if rows and rows[0] < len(table) else None
    if chosen is not None and chosen != st.session_state.get("_channels_table_applied"):
        st.session_state[channel_key] = chosen[1]
    st.session_state["_channels_table_applied"] = chosen


def channel_link(fig: go.Figure, event, block: str | None = None) -> None:
    """Under a Compare classes chart drawn with ``on_select="rerun"``: a link to the Channels page for the clicked
    point (Fig. 6: its trace's block; the heatmap and Fig. 7: ``block``; x is the channel)."""
    points = list(getattr(getattr(event, "selection", None), "points", []) or [])
    if not points:
        return
    point = points[0]
    curve = point.get("curve_number")
    meta = fig.data[curve].meta if curve is not None and curve < len(fig.data) else None
    chosen = meta.get("block") if isinstance(meta, dict) and meta.get("block") else block
    try:
        channel = int(float(point.get("x")))
    except (TypeError, ValueError):
        return
    if chosen is None:
        return
    st.page_link(PAGE, label=f"Open channel {channel} of {chosen} in the Channels view",
                 icon=":material/arrow_forward:", query_params={"block": chosen, "channel": str(channel)})


# ------------------------------------------------------------------------------------------ thumbnails and maps


def thumbnails(src: Source, frame: pd.DataFrame) -> tuple[list[np.ndarray], list[str], int]:
    """(images, captions, missing) of the exemplar rows ``frame`` (in order): the crop the model saw when the
    model is here, else the image; captions give the class, the model's predicted class (``pred_name``, named from
    the model's class list: :attr:`Source.pred_names`) where it differs, and the gate."""
    shown, captions, missing = [], [], 0
    for row in frame.itertuples(index=False):
        picture = src.image(row.key)
        if picture is None:
            missing += 1
            continue
        if src.loaded is not None:
            from senet_viz.analysis.channel_maps import display_image

            array = display_image(src.loaded, picture)
        else:
            array = np.asarray(picture.convert("RGB"))
        shown.append(array)
        label = row.label_name if isinstance(row.label_name, str) and row.label_name else "no label"
        pred = row.pred_name if isinstance(getattr(row, "pred_name", None), str) else ""
        captions.append(f"s={row.gate:.3f} · {label}" + (f" (pred. {pred})" if pred and pred != label else ""))
    return shown, captions, missing


def pregate_maps(src: Source, block: str, channel: int, keys: list[str]
                 ) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """(the keys found, their crops, the channel's SE-input maps) of the images ``keys`` (shared between sessions,
    computed on a worker thread); images that cannot be found are left out."""
    from senet_viz.analysis.channel_maps import display_image

    loaded = src.loaded
    assert loaded is not None
    pictures = [src.image(k) for k in keys]
    keep = [i for i, p in enumerate(pictures) if p is not None]
    pixels = [loaded.transform(pictures[i]) for i in keep]
    se_block = next(b for b in loaded.blocks if b.name == block)
    crops = [display_image(loaded, pictures[i]) for i in keep]
    if not pixels:
        return [], [], np.zeros((0, 1, 1), np.float32)

    return [keys[i] for i in keep], crops, results.channel_maps(loaded, pixels, se_block, int(channel))
