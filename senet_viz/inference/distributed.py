"""Many processes and machines: ``torchrun`` / SLURM process groups and exact reductions.

Launch ``torchrun --nproc_per_node=N -m senet_viz extract|paper|sweep|evaluate ...`` (or one ``srun`` task per
GPU, with ``MASTER_ADDR`` / ``MASTER_PORT`` exported by the job script). Every rank reads ``RANK`` /
``WORLD_SIZE`` / ``LOCAL_RANK`` (under ``srun`` without torchrun: ``SLURM_PROCID`` / ``SLURM_STEP_NUM_TASKS`` /
``SLURM_LOCALID``), runs on ``cuda:LOCAL_RANK`` when CUDA is used (NCCL) or on the CPU (gloo), works on its share
of the images, and rank 0 combines the shares into the one result a single process would have produced.

Sharding (:meth:`Group.shard`): the images are cut into the batches one process would run (``batch_size``
images each, in order) and batch ``b`` goes to rank ``b % world``. Each rank therefore runs batches of the
single-process composition and shape, so per-image outputs (gates, logits) are the same bits as in one process
on the same hardware (kernels choose their algorithm by batch shape).

Reductions, and why they are exact:

- :class:`~senet_viz.analysis.stats.GateStats` (:meth:`Group.reduce_stats`): each rank's statistics travel through
  ``GateStats.save`` / ``GateStats.load`` (exact: float64 means and M2 are stored) and rank 0 merges them in rank
  order with ``GateStats.merge`` (Chan et al.): counts, histograms, min and max are exact; means, M2 and sums
  differ from one pass only by float64 rounding (~1e-16 relative).
- per-image results (:meth:`Group.gather_result`, :meth:`Group.gather_rows`): rows are gathered and put back in
  the single-process order (by image key), so metrics computed from them (top-1, top-5, agreement, KL, mean gates)
  are the single-process numbers bit for bit.

Everything that crosses ranks is plain data (tensors, strings, numbers) sent with ``weights_only=True``, so no
rank unpickles code. Only rank 0 prints or writes. A process group created here is always destroyed, also on
errors; one that the caller created is left alone.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from senet_viz.analysis.ablation import CALIBRATION_FRACTION, AblationResult, evaluate, split_calibration, sweep
from senet_viz.analysis.paper import PAPER_IMAGES_PER_CLASS, PresetResult, paper_preset
from senet_viz.analysis.stats import GateStats
from senet_viz.data.sources import ImageSet, Skipped
from senet_viz.gates.kinds import SEBlock
from senet_viz.inference.run import ProgressFn, Result
from senet_viz.models.loaded import LoadedModel
from senet_viz.settings import env_int

__all__ = ["DistributedError", "Group", "RankInfo", "process_group", "rank_device", "rank_info"]

#: How long a rank waits for the others in one collective before failing (a rank that died is noticed by
#: torchrun at once; under srun use ``--kill-on-bad-exit=1``). ``$SENET_VIZ_DIST_TIMEOUT`` (seconds) overrides.
DEFAULT_TIMEOUT_S = 1800
TIMEOUT_ENV = "SENET_VIZ_DIST_TIMEOUT"


class DistributedError(ValueError):
    """The launch environment is inconsistent (rank variables, devices, rendezvous); the message says how to fix it."""


@dataclass(frozen=True)
class RankInfo:
    """Where this process stands: its rank, the number of ranks, its rank on its machine, and who said so."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    source: str = "single"  # "torchrun" (RANK / WORLD_SIZE), "slurm" (srun) or "single"

    @property
    def distributed(self) -> bool:
        return self.world > 1


def _int_env(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    if default is None and not env.get(name, "").strip():
        raise DistributedError(f"{name} is not set; start the command with torchrun or srun")
    try:
        return env_int(name, 0 if default is None else default, env, minimum=None, strict=True)
    except ValueError as exc:
        raise DistributedError(str(exc)) from None


def rank_info(environ: Mapping[str, str] | None = None) -> RankInfo:
    """Read the rank from the environment: torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` first, else an
    ``srun`` step's ``SLURM_PROCID`` / ``SLURM_STEP_NUM_TASKS`` / ``SLURM_LOCALID``, else a single process.

    ``SLURM_NTASKS`` alone is not trusted: the batch script itself has it (with ``SLURM_PROCID=0``) although it
    is one process, and a plain ``python -m senet_viz`` there must not wait for peers that never come.
    """
    env = os.environ if environ is None else environ
    if env.get("WORLD_SIZE", "").strip():
        world = _int_env(env, "WORLD_SIZE")
        rank = _int_env(env, "RANK", 0 if world == 1 else None)
        local = _int_env(env, "LOCAL_RANK", _int_env(env, "SLURM_LOCALID", 0))
        source = "torchrun"
    elif env.get("SLURM_STEP_NUM_TASKS", "").strip() and env.get("SLURM_PROCID", "").strip():
        world = _int_env(env, "SLURM_STEP_NUM_TASKS")
        rank = _int_env(env, "SLURM_PROCID")
        local = _int_env(env, "SLURM_LOCALID", 0)
        source = "slurm"
    else:
        return RankInfo()
    if world < 1 or not 0 <= rank < world or local < 0:
        raise DistributedError(f"inconsistent ranks from {source}: rank {rank}, world size {world}, "
                               f"local rank {local}")
    return RankInfo(rank, world, local, source if world > 1 else "single")


def rank_device(device: str, local_rank: int) -> str:
    """This rank's device for ``--device``: ``cpu`` stays the CPU; ``auto`` and ``cuda`` become ``cuda:<local
    rank>`` (``auto`` only when CUDA is present); an explicit ``cuda:N`` is kept."""
    device = (device or "auto").strip()
    if device == "cpu":
        return "cpu"
    if device == "auto" and not torch.cuda.is_available():
        return "cpu"
    if device.startswith("cuda:"):
        return device
    if device not in ("auto", "cuda"):
        return device  # let the model loader report an unknown device
    if not torch.cuda.is_available():
        raise DistributedError("device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu or auto")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DistributedError(f"local rank {local_rank} needs cuda:{local_rank}, but this machine sees {count} "
                               f"CUDA device(s); start at most {count} process(es) per machine")
    return f"cuda:{local_rank}"


def _timeout() -> datetime.timedelta:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise DistributedError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    return datetime.timedelta(seconds=seconds)


# ------------------------------------------------------------------------------------------ plain payloads
# Only tensors, strings, numbers, None, lists and dicts cross ranks (loaded with weights_only=True).


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def _pack_result(result: Result, gates: bool, logits: bool) -> dict:
    return {
        "model": result.model, "keys": list(result.keys), "names": list(result.names),
        "labels": _tensor(result.labels), "label_names": list(result.label_names), "pred": _tensor(result.pred),
        "top5": _tensor(result.top5), "top5_prob": _tensor(result.top5_prob),
        "gates": {name: _tensor(g) for name, g in result.gates.items()} if gates else {},
        "skipped": [[s.file, s.reason] for s in result.skipped],
        "logits": _tensor(result.logits) if logits and result.logits is not None else None,
        "precision": result.precision, "fp32_fallback_batches": result.fp32_fallback_batches,
        "forwarded": result.forwarded,
    }


def _unpack_result(packed: dict) -> Result:
    return Result(
        model=packed["model"], keys=list(packed["keys"]), names=list(packed["names"]),
        labels=packed["labels"].numpy(), label_names=list(packed["label_names"]), pred=packed["pred"].numpy(),
        top5=packed["top5"].numpy(), top5_prob=packed["top5_prob"].numpy(),
        gates={name: g.numpy() for name, g in packed["gates"].items()},
        skipped=[Skipped(f, r) for f, r in packed["skipped"]],
        logits=packed["logits"].numpy() if packed["logits"] is not None else None,
        precision=packed["precision"], fp32_fallback_batches=packed["fp32_fallback_batches"],
        forwarded=packed["forwarded"],
    )


def _concat(parts: Sequence[np.ndarray], order: np.ndarray) -> np.ndarray:
    return np.concatenate(parts)[order]


class Group:
    """The ranks of one run; with one process every method is the identity, so callers need no second path.

    ``device`` is this rank's device string for :func:`senet_viz.models.zoo.load_model`; ``main`` is rank 0, the only
    rank that prints or writes.
    """

    def __init__(self, info: RankInfo, device: str, backend: str | None = None) -> None:
        self.info = info
        self.rank, self.world, self.local_rank = info.rank, info.world, info.local_rank
        self.device = device
        self.backend = backend

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"Group(rank={self.rank}, world={self.world}, device={self.device!r}, backend={self.backend!r})"

    # ---------------------------------------------------------------- collectives on plain data

    def all_gather(self, obj: object) -> list:
        """``obj`` of every rank, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj, weights_only=True)
        return out

    def gather(self, obj: object) -> list | None:
        """``obj`` of every rank, in rank order, on rank 0 (None elsewhere)."""
        if not self.active:
            return [obj]
        out: list | None = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0, weights_only=True)
        return out

    def send(self, obj: object, dst: int = 0) -> None:
        dist.send_object_list([obj], dst=dst, weights_only=True)

    def recv(self, src: int) -> object:
        box: list = [None]
        dist.recv_object_list(box, src=src, weights_only=True)
        return box[0]

    def send_result(self, result: Result, dst: int = 0) -> None:
        """Send a whole :class:`Result` (gates and logits included) to rank ``dst``."""
        self.send(_pack_result(result, gates=True, logits=True), dst)

    def recv_result(self, src: int) -> Result:
        return _unpack_result(self.recv(src))

    def first_error(self, error: str | None) -> tuple[int, str] | None:
        """Every rank says whether it failed (a message) or not (None); all ranks get the first failure as
        (rank, message), or None. Lets every rank stop together instead of some waiting for ever."""
        for rank, message in enumerate(self.all_gather(error)):
            if message is not None:
                return rank, message
        return None

    # ---------------------------------------------------------------- work split

    def shard(self, images: ImageSet, batch_size: int) -> ImageSet:
        """This rank's share: batches ``rank, rank + world, ...`` of ``images`` cut into ``batch_size`` batches.

        Each batch is exactly a batch the single-process run would make (only the last batch of the set can be
        short, and it is the last of its rank too), so per-image outputs match it bit for bit. The files left out
        at listing time (``skipped``) go with rank 0's share, to be reported once."""
        if not self.active:
            return images
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        items = images.items
        mine = [it for start in range(self.rank * batch_size, len(items), self.world * batch_size)
                for it in items[start:start + batch_size]]
        return replace(images, items=mine, skipped=list(images.skipped) if self.main else [])

    # ---------------------------------------------------------------- per-image results

    def _order(self, images: ImageSet, keys: Sequence[str]) -> np.ndarray:
        position = {it.key: i for i, it in enumerate(images.items)}
        try:
            return np.argsort(np.array([position[k] for k in keys], dtype=np.int64), kind="stable")
        except KeyError as exc:
            raise RuntimeError(f"image {exc.args[0]!r} of a rank's result is not in the image set") from None

    def _skipped_in_order(self, images: ImageSet, parts: Sequence[list[Skipped]]) -> list[Skipped]:
        """Files left out at listing time first (as the single-process runner lists them), then the images that
        failed to decode, in image order."""
        position = {it.origin: i for i, it in enumerate(images.items)}
        listed = [s for part in parts for s in part if s.file not in position]
        failed = sorted((s for part in parts for s in part if s.file in position), key=lambda s: position[s.file])
        return listed + failed

    def gather_result(self, result: Result, images: ImageSet, *, gates: bool = False, logits: bool = False,
                      to_all: bool = False) -> Result | None:
        """The :class:`Result` one process would have produced over ``images``, from each rank's result over its
        :meth:`shard`: rows back in ``images`` order; ``gates`` / ``logits`` only when asked (they are large).
        On rank 0, or on every rank with ``to_all``; None elsewhere."""
        if not self.active:
            return result if gates and logits else replace(result, gates=result.gates if gates else {},
                                                           logits=result.logits if logits else None)
        packed = _pack_result(result, gates, logits)
        parts = self.all_gather(packed) if to_all else self.gather(packed)
        if parts is None:
            return None
        pieces = [_unpack_result(p) for p in parts]
        keys = [k for p in pieces for k in p.keys]
        names = [n for p in pieces for n in p.names]
        label_names = [n for p in pieces for n in p.label_names]
        order = self._order(images, keys)
        # A rank whose images all failed has no logits (None) and no rows, so the others' logits line up.
        with_logits = [p.logits for p in pieces if p.logits is not None]
        if with_logits and sum(len(x) for x in with_logits) != len(keys):
            raise RuntimeError("some ranks returned logits and others did not")
        return Result(
            model=pieces[0].model,
            keys=[keys[i] for i in order],
            names=[names[i] for i in order],
            labels=_concat([p.labels for p in pieces], order),
            label_names=[label_names[i] for i in order],
            pred=_concat([p.pred for p in pieces], order),
            top5=_concat([p.top5 for p in pieces], order),
            top5_prob=_concat([p.top5_prob for p in pieces], order),
            gates={name: _concat([p.gates[name] for p in pieces], order) for name in pieces[0].gates},
            skipped=self._skipped_in_order(images, [p.skipped for p in pieces]),
            logits=_concat(with_logits, order) if with_logits else None,
            precision=pieces[0].precision,
            fp32_fallback_batches=sum(p.fp32_fallback_batches for p in pieces),
            forwarded=sum(p.forwarded for p in pieces),
        )

    def gather_rows(self, keys: Sequence[str], values: np.ndarray, images: ImageSet) -> np.ndarray | None:
        """Per-image ``values`` (row i belongs to ``keys[i]``) of every rank, in ``images`` order, on rank 0."""
        if not self.active:
            return values
        parts = self.gather([list(keys), _tensor(values)])
        if parts is None:
            return None
        all_keys = [k for part in parts for k in part[0]]
        return _concat([part[1].numpy() for part in parts], self._order(images, all_keys))

    # ---------------------------------------------------------------- statistics

    def reduce_stats(self, stats: GateStats) -> GateStats | None:
        """All ranks' statistics merged into one on rank 0 (None elsewhere), through the public save / load /
        merge only: counts and histograms exact, means and M2 to float64 rounding."""
        if not self.active:
            return stats
        with tempfile.TemporaryDirectory(prefix="senet_viz_stats_") as tmp:
            path = Path(tmp) / f"rank{self.rank}.parquet"
            stats.save(path)
            payload = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        parts = self.gather(payload)
        if parts is None:
            return None
        total = stats
        with tempfile.TemporaryDirectory(prefix="senet_viz_stats_") as tmp:
            for rank, part in enumerate(parts[1:], start=1):
                path = Path(tmp) / f"rank{rank}.parquet"
                path.write_bytes(part.numpy().tobytes())
                total = total.merge(GateStats.load(path))
        return total


@contextlib.contextmanager
def process_group(device: str = "auto", environ: Mapping[str, str] | None = None) -> Iterator[Group]:
    """The ranks of this launch as a :class:`Group`, for the duration of a ``with`` block.

    With more than one rank the default process group is initialised from the environment (``env://``: NCCL
    when this rank uses CUDA, with its device made current so object collectives work; gloo on the CPU) and
    destroyed when the block ends, also on errors. A group that already exists (the caller's) is used and left
    alone. With one rank nothing is initialised and ``device`` is returned unchanged.
    """
    info = rank_info(environ)
    if not info.distributed:
        yield Group(info, device)
        return
    dev = rank_device(device, info.local_rank)
    backend = "nccl" if dev.startswith("cuda") else "gloo"
    owned = not dist.is_initialized()
    if owned:
        env = os.environ if environ is None else environ
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not env.get(v, "").strip()]
        if missing:
            raise DistributedError(f"{' and '.join(missing)} must be set for {info.world} ranks (torchrun sets them; "
                                   "under srun export MASTER_ADDR=<first node> MASTER_PORT=<free port>)")
        if backend == "nccl":
            torch.cuda.set_device(torch.device(dev))
        try:
            dist.init_process_group(backend, init_method="env://", rank=info.rank, world_size=info.world,
                                    timeout=_timeout())
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(f"could not join the process group of {info.world} ranks as rank {info.rank} "
                                   f"({backend}): {exc}") from exc
    elif dist.get_world_size() != info.world or dist.get_rank() != info.rank:
        raise DistributedError(f"a process group of {dist.get_world_size()} ranks exists, but the environment "
                               f"says rank {info.rank} of {info.world}")
    try:
        yield Group(info, dev, backend)
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ sharded commands
# The library functions with this group as their Shards (evaluate, paper_preset), or run on each rank's share
# and combined (sweep): with one process they are the library functions themselves.


def paper_preset_sharded(group: Group, loaded: LoadedModel, images: ImageSet, classes=None,
                         per_class: int | None = None, batch_size: int = 32, progress: ProgressFn | None = None,
                         precision: str = "auto") -> PresetResult | None:
    """:func:`senet_viz.analysis.paper.paper_preset` over all ranks: the same classes and images (chosen on the
    whole set by every rank), each rank's share of the batches, statistics reduced on rank 0. Returns the
    :class:`~senet_viz.analysis.paper.PresetResult` on rank 0, None elsewhere."""
    per_class = PAPER_IMAGES_PER_CLASS if per_class is None else per_class
    return paper_preset(loaded, images, classes=classes, per_class=per_class, batch_size=batch_size,
                        progress=progress, precision=precision, shards=group)


def evaluate_sharded(group: Group, loaded: LoadedModel, images: ImageSet, ablate_blocks: Sequence[SEBlock] = (),
                     mode: str = "identity", *, calibrate_on_eval: bool = False, batch_size: int = 32,
                     progress: ProgressFn | None = None, precision: str = "auto") -> AblationResult | None:
    """:func:`senet_viz.analysis.ablation.evaluate` over all ranks, bit for bit (``shards=group``): the
    calibration gates are gathered to every rank and averaged in single-process order; each rank runs its share
    of the full and ablated passes; predictions, labels and per-image KL are gathered to rank 0, which computes the
    metrics as one process does. Returns the same :class:`~senet_viz.analysis.ablation.AblationResult` on rank 0,
    None elsewhere."""
    return evaluate(loaded, images, ablate_blocks, mode, calibrate_on_eval=calibrate_on_eval, batch_size=batch_size,
                    progress=progress, precision=precision, shards=group)


# Sweep columns and how the ranks' rows combine into the single-process row.
_SWEEP_SUMS = ("n_images", "n_scored", "n_skipped")
_SWEEP_SCORED_MEANS = ("top1", "top5", "full_top1", "full_top5")  # shares of the scored images
_SWEEP_DIFFS = {"d_top1": ("top1", "full_top1"), "d_top5": ("top5", "full_top5")}


def _count(share, n: int) -> int:
    # A share computed as count / n (n < 2**52) gives its count back exactly.
    return 0 if share is None or n == 0 or share != share else int(round(share * n))


def _combine_sweep_rows(rows: Sequence[dict]) -> dict:
    out = dict(rows[0])
    for col in _SWEEP_SUMS:
        out[col] = int(sum(r[col] for r in rows))
    scored = out["n_scored"]
    for col in _SWEEP_SCORED_MEANS:
        out[col] = sum(_count(r[col], r["n_scored"]) for r in rows) / scored if scored else None
    for col, (a, b) in _SWEEP_DIFFS.items():
        out[col] = None if out[a] is None else (out[a] - out[b]) * 100
    n = out["n_images"]
    out["agreement"] = sum(_count(r["agreement"], r["n_images"]) for r in rows) / n if n else None
    # Mean KL from the ranks' means weighted by their image counts: float64 rounding away from one pass.
    out["kl"] = float(np.sum([r["kl"] * r["n_images"] for r in rows if r["n_images"]])) / n if n else None
    combined = {*_SWEEP_SUMS, *_SWEEP_SCORED_MEANS, *_SWEEP_DIFFS, "agreement", "kl"}
    for col in out:
        if col not in combined and any(r[col] != rows[0][col] for r in rows[1:]):
            raise RuntimeError(f"sweep column {col!r} differs between ranks and has no rule to combine it; "
                               "add one in senet_viz/inference/distributed.py")
    return out


def sweep_sharded(group: Group, loaded: LoadedModel, images: ImageSet, modes: Sequence[str] = ("identity", "mean"),
                  configs=None, *, batch_size: int = 64, progress: ProgressFn | None = None,
                  precision: str = "auto") -> pd.DataFrame | None:
    """:func:`senet_viz.analysis.ablation.sweep` over all ranks. Every rank runs ``sweep`` on the whole calibration
    split
    (so the mean gates are the single-process ones, bit for bit; it is one pass over 20 % of the images against
    a pass per configuration over the rest) plus its share of the evaluation images; rank 0 adds up the counts.
    top-1, top-5 and agreement are exact (shares of integer counts); KL is the image-weighted mean of the ranks'
    means (float64 rounding). Returns the same DataFrame on rank 0, None elsewhere."""
    if not group.active:
        return sweep(loaded, images, modes, configs, batch_size=batch_size, progress=progress, precision=precision)
    if "mean" in modes:
        calib, eval_images = split_calibration(images, CALIBRATION_FRACTION)
        mine = group.shard(eval_images, batch_size)
        # sweep() splits again by key: it finds the whole calibration split and this rank's evaluation share.
        share = replace(images, items=calib.items + mine.items, skipped=mine.skipped)
    else:
        share = group.shard(images, batch_size)
    frame = sweep(loaded, share, modes, configs, batch_size=batch_size, progress=progress, precision=precision)
    parts = group.gather({"columns": list(frame.columns), "rows": frame.to_dict(orient="records")})
    if parts is None:
        return None
    rows = [_combine_sweep_rows([part["rows"][i] for part in parts]) for i in range(len(parts[0]["rows"]))]
    return pd.DataFrame(rows, columns=parts[0]["columns"])
