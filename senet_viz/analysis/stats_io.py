"""Gate statistics on disk: the Parquet layout that :meth:`senet_viz.analysis.stats.GateStats.save` writes and
:meth:`~senet_viz.analysis.stats.GateStats.load` reads, from and to the plain-data state of
:meth:`senet_viz.analysis.stats_accumulate.GateAccumulator.state`.

One row per (block, class or "all") with list columns, a few MiB per row group, so a file is mergeable and loads
without executing anything (no pickle); :func:`read_state` also reads the older tidy per-channel layout
(format 1). Reading is safe on untrusted files: before anything is allocated, the declared shapes (blocks,
channels, bins) are checked against the values the Parquet footer says the file holds, the footer against every
page header (:func:`senet_viz.data.parquet_pages.check_pages`), and with ``max_bytes`` the memory the statistics
would take (declared arrays plus decoded columns) against that bound (:class:`StatsTooLarge`, a ``ValueError``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from senet_viz.analysis.stats_accumulate import MAX_DETAIL_CLASSES, UnknownName
from senet_viz.analysis.stats_block import empty_block_state
from senet_viz.data.parquet_pages import check_pages

FORMAT_VERSION = 2
META_KEY = b"senet_viz_stats"
"""The Parquet schema metadata key that holds the statistics' JSON description."""
ROW_GROUP_BYTES = 4 << 20
"""Means per row group written (a block's class rows are split into groups of about this size)."""


class StatsTooLarge(ValueError):
    """Saved statistics that would take more memory than allowed, or whose declared shapes the file cannot hold."""


MAX_BINS = 4096  # histogram bins a saved file may declare (the library writes 50)
#: The statistics' JSON metadata (model, blocks, class names): 30 KB for ImageNet's 1,000 classes, under 1 MB for
#: 21,843; parsing more would cost tens of times its size in Python objects.
MAX_META_BYTES = 4 << 20


def _names(column) -> list[str]:
    """The rows of a string column, each distinct value decoded once when it is dictionary-encoded (rows share
    it: a forged file cannot make one long name take memory in every row)."""
    import pyarrow as pa

    out: list[str] = []
    for chunk in column.chunks:
        if chunk.null_count:
            raise ValueError("the statistics have rows without a block name")
        if pa.types.is_dictionary(chunk.type):
            names = chunk.dictionary.to_pylist()
            out += [names[i] for i in chunk.indices.to_numpy(zero_copy_only=False)]
        else:
            out += chunk.to_pylist()
    return out


def _check_sizes(footer, meta: object, max_bytes: int | None) -> None:
    """Refuse saved statistics whose metadata is malformed, declares arrays the file does not hold, or would take
    more than ``max_bytes`` once read, from the Parquet footer alone (no column is read, nothing is allocated).

    Every saved block has its all-image row with ``channels`` means and ``channels x bins`` histogram counts, so
    the declared shapes are bounded by the values the footer counts; the decoded columns are bounded by the
    footer's value counts and uncompressed sizes."""
    if not isinstance(meta, dict):
        raise ValueError("the statistics' metadata is not a JSON object")
    fmt, bins, blocks, names = meta.get("format", 1), meta.get("bins"), meta.get("blocks"), meta.get("class_names")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise ValueError(f"the statistics' format {fmt!r} is not a number")
    if not isinstance(meta.get("model"), str):
        raise ValueError("the statistics do not name their model")
    if not isinstance(bins, int) or isinstance(bins, bool) or not 1 <= bins <= MAX_BINS:
        raise ValueError(f"the statistics declare {bins!r} histogram bins (expected 1 to {MAX_BINS})")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("the statistics' class names are not a list of strings")
    fields = {"name": str, "stage": int, "order": int, "channels": int}
    if not isinstance(blocks, list) or not blocks or not all(
            isinstance(b, dict) and set(b) == set(fields) and all(isinstance(b[k], t) for k, t in fields.items())
            for b in blocks):
        raise ValueError("the statistics' block list is missing or malformed (each block: name, stage, order, "
                         "channels)")
    if len({b["name"] for b in blocks}) != len(blocks) or any(b["channels"] < 1 for b in blocks):
        raise ValueError("the statistics' block list repeats a block or declares a block without channels")
    # Leaf values per column (nulls count one each) summed over the row groups, and each group's decoded bytes.
    values: dict[str, int] = {}
    decoded, largest = 0, 0
    for i in range(footer.num_row_groups):
        group, size = footer.row_group(i), 0
        for j in range(group.num_columns):
            column = group.column(j)
            top, count = column.path_in_schema.split(".")[0], max(int(column.num_values), 0)
            values[top] = values.get(top, 0) + count
            size += max(int(column.total_uncompressed_size), 8 * count)
        decoded, largest = decoded + size, max(largest, size)
    gates = sum(b["channels"] for b in blocks)
    # What the empty statistics allocate before a row is read: per channel the all-image mean, m2, min, max and
    # histogram of every declared block.
    declared = 8 * gates * (bins + 4)
    if fmt == 1:  # one row per (block, class or all, channel), each with its channel's histogram
        held, need = int(footer.num_rows), gates
    else:
        held, need = min(values.get("mean", 0), values.get("hist", 0) // bins), gates
    if need > held:
        raise StatsTooLarge(f"the statistics declare {gates:,} gates in {len(blocks)} blocks with {bins} bins, but "
                            f"the file holds the values of only {held:,}: it is damaged or was not written by "
                            "senet-viz")
    if fmt == 1:  # read whole through pandas: the table, about a kilobyte per row, and the arrays built from it
        needed = declared + 2 * decoded + 1024 * int(footer.num_rows)
    else:  # class rows and histograms are copied into arrays sized exactly; one row group is decoded (pages,
        # arrays, copies: about four times its size)
        needed = declared + decoded + 4 * largest
    if max_bytes is not None and needed > max_bytes:
        raise StatsTooLarge(f"the statistics would take about {needed / 2**20:,.0f} MiB of memory once read, over "
                            f"the {max_bytes / 2**20:,.0f} MiB this reader allows")


def _schema():
    """Columns of the saved layout (format 2)."""
    import pyarrow as pa

    floats, ints = pa.large_list(pa.float64()), pa.large_list(pa.int64())
    return pa.schema([("block", pa.string()), ("class_index", pa.int64()), ("count", pa.int64()),
                      ("sum_abs_1m", pa.float64()), ("pooled_min", pa.float64()), ("pooled_max", pa.float64()),
                      ("mean", floats), ("m2", floats), ("pooled_hist", ints), ("min", floats), ("max", floats),
                      ("hist", ints)])


def _list_array(parts: list[np.ndarray | None], dtype) -> object:
    """A large_list column from 1-D arrays (None = a null entry)."""
    import pyarrow as pa

    sizes = np.array([0 if p is None else len(p) for p in parts], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    values = [np.asarray(p, dtype=dtype).ravel() for p in parts if p is not None]
    flat = np.concatenate(values) if values else np.zeros(0, dtype)
    mask = pa.array([p is None for p in parts], pa.bool_())
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(flat), mask=mask)


def _list_values(column) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat values, offsets, valid) of a list column read from Parquet."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = np.asarray(arr.offsets.to_numpy(zero_copy_only=False), np.int64)
    values = arr.values.to_numpy(zero_copy_only=False)
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), bool)
    return values, offsets, valid


# ------------------------------------------------------------------------------------------------ writing


def _taken(first: Any, rows: np.ndarray, picks: np.ndarray, dtype) -> np.ndarray:
    """Per pick, ``first`` (pick -1: the "all" row) or ``rows[pick]``: the values of one column (one copy)."""
    first = np.asarray(first, dtype)
    out = np.empty((len(picks), *first.shape), dtype)
    real = picks >= 0
    out[~real] = first
    out[real] = np.asarray(rows)[picks[real]]
    return out


def _lists(values: np.ndarray) -> object:
    """A large_list column with one list per row of the 2-D ``values``."""
    import pyarrow as pa

    offsets = np.arange(len(values) + 1, dtype=np.int64) * values.shape[1]
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(values.ravel()))


def _rows_table(name: str, acc: dict[str, Any], picks: np.ndarray, schema) -> object:
    """Rows of one block from its state: pick -1 is the "all" row, others index its class rows."""
    import pyarrow as pa

    n = int(acc["n"])
    real = picks >= 0
    ks = np.full(len(picks), -1, np.int64)
    ks[real] = np.asarray(acc["classes"])[picks[real]]
    every = {"hist": acc["hist"], "min": acc["min"], "max": acc["max"]}
    details = [every if k < 0 else acc["detail"].get(int(k)) for k in ks]
    pooled_all = (float(acc["min"].min()), float(acc["max"].max())) if n else (np.inf, -np.inf)
    columns = {
        "block": pa.array([name] * len(picks), pa.string()),
        "class_index": pa.array(ks.astype(np.int64)),
        "count": pa.array(_taken(n, acc["count"], picks, np.int64)),
        "sum_abs_1m": pa.array(_taken(acc["sum_abs_1m"], acc["pooled_sum_abs_1m"], picks, np.float64)),
        "pooled_min": pa.array(_taken(pooled_all[0], acc["pooled_min"], picks, np.float64)),
        "pooled_max": pa.array(_taken(pooled_all[1], acc["pooled_max"], picks, np.float64)),
        "mean": _lists(_taken(acc["mean"], acc["means"], picks, np.float64)),
        "m2": _lists(_taken(acc["m2"], acc["m2s"], picks, np.float64)),
        "pooled_hist": _lists(_taken(acc["hist"].sum(axis=0), acc["pooled_hist"], picks, np.int64)),
        "min": _list_array([None if d is None else d["min"] for d in details], np.float64),
        "max": _list_array([None if d is None else d["max"] for d in details], np.float64),
        "hist": _list_array([None if d is None else d["hist"].ravel() for d in details], np.int64),
    }
    return pa.Table.from_pydict(columns, schema=schema)


def write_state(state: dict[str, Any], path: str | Path) -> None:
    """Write statistics (their :meth:`~senet_viz.analysis.stats_accumulate.GateAccumulator.state`) to Parquet:
    per block the "all" row, then the classes in index order, in row groups of at most :data:`ROW_GROUP_BYTES`
    of means, so writing (and reading) holds one group beside the statistics, not a copy of a block."""
    import pyarrow.parquet as pq

    meta = {"format": FORMAT_VERSION, "model": state["model"], "bins": state["bins"],
            "class_names": state["class_names"], "blocks": state["blocks"],
            "detail_classes": state["detail_classes"], "max_detail_classes": state["max_detail_classes"],
            "seen": state["seen"]}
    schema = _schema().with_metadata({META_KEY: json.dumps(meta).encode()})
    # Only the block names are dictionary-encoded: a dictionary of float lists costs memory and gains nothing.
    with pq.ParquetWriter(str(path), schema, compression="zstd", use_dictionary=["block"]) as writer:
        for b in state["blocks"]:
            acc = state["accumulators"][b["name"]]
            picks = np.concatenate([[-1], np.argsort(acc["classes"], kind="stable")]).astype(np.int64)
            step = max(1, ROW_GROUP_BYTES // (8 * int(b["channels"])))
            for start in range(0, len(picks), step):
                writer.write_table(_rows_table(b["name"], acc, picks[start:start + step], schema))


# ------------------------------------------------------------------------------------------------ reading


def _unknown_block(name: str, blocks: list[dict]) -> UnknownName:
    return UnknownName(f"unknown block {name!r}; valid blocks: {[b['name'] for b in blocks]}")


def _fill_rows(state: dict[str, Any], table, row_of: dict[str, dict[int, int]]) -> None:
    """Copy rows of the saved layout (any blocks, any order) into ``state``'s arrays, checking every length."""
    bins, seen = state["bins"], state["seen"]
    channels = {b["name"]: b["channels"] for b in state["blocks"]}
    block = _names(table.column("block"))
    klass = table.column("class_index").to_numpy()
    count = table.column("count").to_numpy()
    scalars = {k: table.column(k).to_numpy() for k in ("sum_abs_1m", "pooled_min", "pooled_max")}
    lists = {k: _list_values(table.column(k)) for k in ("mean", "m2", "pooled_hist", "min", "max", "hist")}

    def get(key: str, i: int, size: int) -> np.ndarray | None:
        values, offsets, valid = lists[key]
        if not valid[i]:
            return None
        part = values[offsets[i]:offsets[i + 1]]
        if part.size != size:
            raise ValueError(f"{block[i]}: {key} of {part.size} values, expected {size}")
        return part.copy()

    for i, name in enumerate(block):
        if name not in channels:
            raise _unknown_block(name, state["blocks"])
        acc, C = state["accumulators"][name], channels[name]
        k, n = int(klass[i]), int(count[i])
        mean, m2 = get("mean", i, C), get("m2", i, C)
        if mean is None or m2 is None or n < 0:
            raise ValueError(f"{name}: incomplete statistics row for class {k}")
        hist, lo, hi = get("hist", i, C * bins), get("min", i, C), get("max", i, C)
        if k < 0:
            if hist is None or lo is None or hi is None:
                raise ValueError(f"{name}: the all-image row lacks its histogram, min or max")
            acc.update(n=n, mean=mean, m2=m2, min=lo, max=hi, hist=hist.reshape(C, bins).astype(np.int64),
                       sum_abs_1m=float(scalars["sum_abs_1m"][i]))
            continue
        pooled = get("pooled_hist", i, bins)
        if pooled is None:
            raise ValueError(f"{name}: incomplete statistics row for class {k}")
        r = row_of[name][k]
        acc["count"][r], acc["means"][r], acc["m2s"][r], acc["pooled_hist"][r] = n, mean, m2, pooled
        for key, column in (("pooled_sum_abs_1m", "sum_abs_1m"), ("pooled_min", "pooled_min"),
                            ("pooled_max", "pooled_max")):
            acc[key][r] = scalars[column][i]
        if hist is not None and lo is not None and hi is not None:
            acc["detail"][k] = {"hist": hist.reshape(C, bins).astype(np.int64), "min": lo, "max": hi}
        seen.add(k)


def _state_v1(table, meta: dict) -> dict[str, Any]:
    """The first layout: one row per (block, class, channel) with per-channel histograms for every class."""
    frame = table.to_pandas()
    classes = sorted({int(k) for k in frame["class_index"].unique() if k >= 0})
    bins = int(meta["bins"])
    # Every class had complete per-channel histograms: keep them all (an explicit list, so merges keep them too).
    state = {"model": meta["model"], "blocks": meta["blocks"], "class_names": list(meta["class_names"]),
             "bins": bins, "detail_classes": classes, "max_detail_classes": MAX_DETAIL_CLASSES, "seen": classes,
             "accumulators": {}}
    channels = {b["name"]: b["channels"] for b in meta["blocks"]}
    rows: dict[str, list] = {}
    for (block, k), part in frame.groupby(["block", "class_index"], sort=False, observed=True):
        block, k = str(block), int(k)
        if block not in channels:
            raise _unknown_block(block, meta["blocks"])
        part = part.sort_values("channel")
        hist = np.stack(part["hist"].to_numpy()).astype(np.int64)
        lo, hi = part["min"].to_numpy(np.float64, copy=True), part["max"].to_numpy(np.float64, copy=True)
        mean, m2 = part["mean"].to_numpy(np.float64, copy=True), part["m2"].to_numpy(np.float64, copy=True)
        rows.setdefault(block, []).append((k, int(part["count"].iloc[0]), mean, m2, lo, hi, hist,
                                           float(meta["sum_abs_1m"][f"{block}|{k}"])))
    for name, C in channels.items():
        found = rows.get(name, [])
        real = [r for r in found if r[0] >= 0]
        acc = empty_block_state(C, bins, [r[0] for r in real])
        for k, n, mean, m2, lo, hi, hist, sum_abs in found:
            if k < 0:
                acc.update(n=n, mean=mean, m2=m2, min=lo, max=hi, hist=hist, sum_abs_1m=sum_abs)
        for r, (k, n, mean, m2, lo, hi, hist, sum_abs) in enumerate(real):
            acc["count"][r], acc["means"][r], acc["m2s"][r], acc["pooled_sum_abs_1m"][r] = n, mean, m2, sum_abs
            acc["pooled_hist"][r], acc["pooled_min"][r], acc["pooled_max"][r] = hist.sum(axis=0), lo.min(), hi.max()
            acc["detail"][k] = {"hist": hist, "min": lo, "max": hi}
        state["accumulators"][name] = acc
    return state


def read_state(path: str | Path, max_bytes: int | None = None) -> dict[str, Any]:
    """The state of statistics saved by :func:`write_state` (this layout or the older per-channel one), read one
    row group at a time into arrays sized exactly; Parquet only, nothing is unpickled or executed. Checked
    before anything is allocated (see the module doc); ``max_bytes`` bounds the memory the statistics would take.
    The arrays are writable and owned: :meth:`~senet_viz.analysis.stats_accumulate.GateAccumulator.from_state`
    takes them over without a copy."""
    import pyarrow.parquet as pq

    # Block names stay dictionary-encoded: a forged file cannot repeat one long name into every decoded row.
    source = pq.ParquetFile(str(path), read_dictionary=["block"], thrift_string_size_limit=MAX_META_BYTES,
                            thrift_container_size_limit=1 << 20)
    raw = (source.schema_arrow.metadata or {}).get(META_KEY)
    if raw is None:
        raise ValueError(f"{path} holds no senet-viz statistics (metadata {META_KEY.decode()!r} missing)")
    if len(raw) > MAX_META_BYTES:
        raise StatsTooLarge(f"the statistics' metadata is {len(raw) / 2**20:,.1f} MiB, over the "
                            f"{MAX_META_BYTES / 2**20:,.0f} MiB limit")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"the statistics' metadata is not valid JSON: {exc}") from None
    _check_sizes(source.metadata, meta, max_bytes)
    with open(path, "rb") as f:
        check_pages(f, source.metadata)
    if meta.get("format", 1) == 1:
        return _state_v1(source.read(), meta)
    if meta["format"] > FORMAT_VERSION:
        raise ValueError(f"statistics format {meta['format']} is newer than this senet-viz reads")
    bins = int(meta["bins"])
    state = {"model": meta["model"], "blocks": meta["blocks"], "class_names": list(meta["class_names"]),
             "bins": bins, "detail_classes": meta.get("detail_classes"),
             "max_detail_classes": int(meta.get("max_detail_classes", MAX_DETAIL_CLASSES)),
             "seen": {int(k) for k in meta.get("seen", [])}, "accumulators": {}}
    # Each block's class rows sized once, exactly (the two key columns are small): the memory is what
    # _check_sizes counted.
    table = source.read(columns=["block", "class_index"])
    keys = pd.DataFrame({"block": _names(table.column("block")), "class_index": table.column("class_index")})
    del table
    classes = {name: part["class_index"].drop_duplicates().to_numpy()
               for name, part in keys[keys["class_index"] >= 0].groupby("block", sort=False)}
    del keys
    for name in classes:
        if name not in {b["name"] for b in meta["blocks"]}:
            raise _unknown_block(name, meta["blocks"])
    row_of = {}
    for b in meta["blocks"]:
        ks = classes.get(b["name"], np.zeros(0, np.int64))
        state["accumulators"][b["name"]] = empty_block_state(b["channels"], bins, ks)
        row_of[b["name"]] = {int(k): r for r, k in enumerate(ks)}
    for i in range(source.num_row_groups):
        _fill_rows(state, source.read_row_group(i), row_of)
    state["seen"] = sorted(state["seen"])
    return state
