"""Excitations on disk: a compact Parquet layout for captured gates, written in chunks, read back by block.

Schema (one row per image; ``extract`` writes it, ``read_excitations`` reads one or many shards):

=============  ==============================  ==================================================
column         type                            meaning
=============  ==============================  ==================================================
``key``        string                          unique image id (relative path or upload hash)
``name``       string                          file name for display
``label``      int32                           class index, -1 if unknown
``label_name`` string (nullable)               class name
``pred``       int32                           top-1 predicted class index
``SE_<s>_<b>`` fixed_size_list<float16>[C]     the block's C gates, one column per SE block
=============  ==============================  ==================================================

File metadata ``senet_viz`` (JSON): model name, weights source and digest, class names, and per block its
name, module path, stage, index, channels. float16 keeps three decimals of a gate in [0, 1] and halves size:
SE-ResNet-50 has 15,104 gates per image, 30 kB, so 50,000 images are about 1.5 GB before zstd compression.
A reader that needs one block reads only that column (``read_excitations(paths, blocks=["SE_5_3"])``).
A reader that streams (statistics, exemplars, one channel's values) takes chosen columns of the shards in
batches through :func:`iter_batches`.
Shards written with ``--shard i/n`` share the metadata and concatenate row-wise.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:  # reading needs no torch: blocks and results are only read here
    from senet_viz.gates.kinds import SEBlock
    from senet_viz.inference.run import Result

META_KEY = b"senet_viz"
FIXED_COLUMNS = ("key", "name", "label", "label_name", "pred")


def _schema(blocks: Sequence[SEBlock], meta: dict) -> pa.Schema:
    fields = [pa.field("key", pa.string()), pa.field("name", pa.string()), pa.field("label", pa.int32()),
              pa.field("label_name", pa.string()), pa.field("pred", pa.int32())]
    fields += [pa.field(b.name, pa.list_(pa.float16(), b.channels)) for b in blocks]
    return pa.schema(fields, metadata={META_KEY: json.dumps(meta).encode()})


def _block_meta(blocks: Sequence[SEBlock]) -> list[dict]:
    return [{"name": b.name, "path": b.path, "stage": b.stage, "index": b.index, "channels": b.channels}
            for b in blocks]


class ExcitationWriter:
    """Append :class:`Result` chunks to one Parquet file (one row group per chunk)."""

    def __init__(self, path: str | Path, blocks: Sequence[SEBlock], meta: dict) -> None:
        self.blocks = list(blocks)
        self.schema = _schema(self.blocks, {**meta, "blocks": _block_meta(self.blocks)})
        self.writer = pq.ParquetWriter(str(path), self.schema, compression="zstd")
        self.rows = 0

    def write(self, result: Result) -> None:
        columns = [pa.array(result.keys, pa.string()), pa.array(result.names, pa.string()),
                   pa.array(result.labels.astype(np.int32)), pa.array(result.label_names, pa.string()),
                   pa.array(result.pred.astype(np.int32))]
        for b in self.blocks:
            flat = pa.array(np.ascontiguousarray(result.gates[b.name], dtype=np.float16).reshape(-1))
            columns.append(pa.FixedSizeListArray.from_arrays(flat, b.channels))
        self.writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))
        self.rows += result.n

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> ExcitationWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Excitations:
    """Gates read back from one or more Parquet shards."""

    meta: dict
    keys: list[str]
    names: list[str]
    labels: np.ndarray
    label_names: list[str | None]
    pred: np.ndarray
    gates: dict[str, np.ndarray]  # block name -> float16 (N, C)

    @property
    def blocks(self) -> list[dict]:
        return self.meta["blocks"]


def read_meta(path: str | Path) -> dict:
    return json.loads(pq.read_schema(str(path)).metadata[META_KEY])


def read_shards_meta(paths: str | Path | Sequence[str | Path]) -> tuple[list[Path], dict]:
    """The shards as paths and the first one's metadata; every shard must hold gates of the same model and blocks
    (``ValueError`` otherwise, or when no shard is given)."""
    paths = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    if not paths:
        raise ValueError("no excitation file given")
    meta = read_meta(paths[0])
    for p in paths[1:]:
        other = read_meta(p)
        if (other["model"], other["blocks"]) != (meta["model"], meta["blocks"]):
            raise ValueError(f"{p} holds gates of another model or block set than {paths[0]}; they cannot be "
                             "read together")
    return paths, meta


def iter_batches(paths: Sequence[str | Path], columns: Sequence[str], batch_rows: int
                 ) -> Iterator[tuple[int, pa.RecordBatch]]:
    """``(first row, batch)`` of ``columns`` over the shards in order, at most ``batch_rows`` rows each, rows
    numbered across the shards: memory is one batch of the chosen columns, whatever the number of images."""
    first = 0
    for path in paths:
        for batch in pq.ParquetFile(str(path)).iter_batches(batch_size=int(batch_rows), columns=list(columns)):
            yield first, batch
            first += batch.num_rows


def batch_gates(batch: pa.RecordBatch, block: str, channels: int) -> np.ndarray:
    """The gates of ``block`` in a batch, ``(rows, channels)`` float16 (no copy where Arrow allows)."""
    return batch.column(block).flatten().to_numpy(zero_copy_only=False).reshape(-1, channels)


def batch_ints(batch: pa.RecordBatch, column: str) -> np.ndarray:
    """An integer column of a batch (``label``, ``pred``) as int64."""
    return batch.column(column).to_numpy(zero_copy_only=False).astype(np.int64)


def read_excitations(paths: str | Path | Sequence[str | Path], blocks: Sequence[str] | None = None) -> Excitations:
    """Read shards (same model and blocks) into one :class:`Excitations`; ``blocks`` limits the columns read."""
    paths, meta = read_shards_meta(paths)
    names = [b["name"] for b in meta["blocks"]] if blocks is None else list(blocks)
    unknown = set(names) - {b["name"] for b in meta["blocks"]}
    if unknown:
        raise ValueError(f"blocks {sorted(unknown)} are not in {paths[0]}")
    table = pa.concat_tables([pq.read_table(str(p), columns=[*FIXED_COLUMNS, *names]) for p in paths])
    gates = {}
    for name in names:
        col = table.column(name).combine_chunks()
        channels = col.type.list_size
        gates[name] = col.flatten().to_numpy(zero_copy_only=False).astype(np.float16).reshape(-1, channels)
    if blocks is not None:
        meta = {**meta, "blocks": [b for b in meta["blocks"] if b["name"] in names]}
    return Excitations(meta=meta, keys=table.column("key").to_pylist(), names=table.column("name").to_pylist(),
                       labels=table.column("label").to_numpy().astype(np.int64),
                       label_names=table.column("label_name").to_pylist(), pred=table.column("pred").to_numpy(),
                       gates=gates)
