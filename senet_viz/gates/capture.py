"""Scoped hooks on SE gates: record them (:func:`capture`) or replace them (:func:`ablate`).

Both are context managers that take the model's lock for their whole scope, register forward hooks on the
gate modules (see :mod:`senet_viz.gates.blocks`) and remove every hook on exit, also when the forward raises. The
model itself is never edited, so a model shared between users (Streamlit's ``cache_resource``) stays intact:
an ablation is a hook that exists only inside one ``with`` block, under the lock.

    with capture(model, blocks) as rec:
        model(x)
    rec.gates["SE_5_1"]  # numpy float16, N x C

    with ablate(model, select_blocks(blocks, "stage:5"), mode="identity"):
        logits = model(x)
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from senet_viz.gates.kinds import SEBlock

_locks: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The one re-entrant lock of ``model``: every hooked forward on it runs while holding it."""
    with _locks_guard:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.RLock()
        return lock


def hook_count(model: nn.Module) -> int:
    """Number of forward / pre-forward hooks on any module of ``model`` (0 when nothing leaked)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _grad_context(grad: bool) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if grad else torch.inference_mode()


class GateRecorder:
    """Gates recorded per block, as float16 CPU arrays of shape (N images, C channels).

    By default each hook copies its gate to the host at once. With ``per_batch=True`` the hooks keep the gates on
    the model's device until :meth:`commit` copies all of them to the host in one transfer (one device -> host
    synchronisation per batch instead of one per block) or :meth:`discard` drops them (a batch to redo). Reading
    :attr:`gates` commits what is pending.
    """

    def __init__(self, blocks: Sequence[SEBlock], keep: bool = True,
                 on_gates: Callable[[str, np.ndarray], None] | None = None, per_batch: bool = False) -> None:
        self.blocks = list(blocks)
        self.keep = keep
        self.on_gates = on_gates
        self.per_batch = per_batch
        self._chunks: dict[str, list[np.ndarray]] = {b.name: [] for b in self.blocks}
        self._pending: list[tuple[str, torch.Tensor]] = []

    def _record(self, name: str, gate: torch.Tensor) -> None:
        if self.per_batch:
            # float16 on the device already (half the bytes to move, and what is stored anyway); a copy, since the
            # gate may already be float16 and the network's own tensor must not be held past the forward.
            self._pending.append((name, gate.detach().flatten(1).to(torch.float16, copy=True)))
            return
        # One row per image; float16 halves memory and disk, and a gate in [0, 1] keeps ~3 decimals.
        self._store(name, gate.detach().flatten(1).to(torch.float16).cpu().numpy())

    def _store(self, name: str, array: np.ndarray) -> None:
        if self.keep:
            self._chunks[name].append(array)
        if self.on_gates is not None:
            self.on_gates(name, array)

    def pending_finite(self) -> torch.Tensor:
        """A boolean scalar tensor (on the gates' device, not synchronised): no pending gate is NaN or infinite."""
        if not self._pending:
            return torch.tensor(True)
        return torch.stack([torch.isfinite(g).all() for _, g in self._pending]).all()

    def commit(self) -> None:
        """Copy the pending gates to the host in one transfer, then store them (and call ``on_gates``)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        flat = torch.cat([g.reshape(-1) for _, g in pending]).cpu().numpy()
        start = 0
        for name, g in pending:
            n = g.numel()
            self._store(name, flat[start:start + n].reshape(g.shape))
            start += n

    def discard(self) -> None:
        """Drop the pending gates (their forward is being redone)."""
        self._pending.clear()

    @property
    def gates(self) -> dict[str, np.ndarray]:
        self.commit()
        out = {}
        for b in self.blocks:
            chunks = self._chunks[b.name]
            if len(chunks) > 1:  # consolidate once so repeated reads are cheap
                self._chunks[b.name] = chunks = [np.concatenate(chunks)]
            out[b.name] = chunks[0] if chunks else np.zeros((0, b.channels), np.float16)
        return out

    def clear(self) -> None:
        self._pending.clear()
        for chunks in self._chunks.values():
            chunks.clear()


def _modules(model: nn.Module, blocks: Sequence[SEBlock]) -> list[tuple[SEBlock, nn.Module]]:
    modules = dict(model.named_modules())
    missing = [b.gate_path for b in blocks if b.gate_path not in modules]
    if missing:
        raise ValueError(f"these SE gates are not in the model: {missing}; were the blocks found on another model?")
    return [(b, modules[b.gate_path]) for b in blocks]


@contextlib.contextmanager
def capture(model: nn.Module, blocks: Sequence[SEBlock], *, keep: bool = True,
            on_gates: Callable[[str, np.ndarray], None] | None = None,
            grad: bool = False, per_batch: bool = False) -> Iterator[GateRecorder]:
    """Record the gates of ``blocks`` for every forward run inside the ``with`` block.

    ``keep=False`` with an ``on_gates(name, array)`` callback streams gates without keeping them (for
    datasets too large for memory). Forwards run under ``torch.inference_mode`` unless ``grad=True``.
    ``per_batch=True``: gates wait on the device for ``recorder.commit()`` (see :class:`GateRecorder`).
    """
    recorder = GateRecorder(blocks, keep=keep, on_gates=on_gates, per_batch=per_batch)
    handles = []
    with model_lock(model):
        try:
            for block, gate in _modules(model, blocks):
                handles.append(gate.register_forward_hook(
                    lambda _m, _i, out, name=block.name: recorder._record(name, out)))
            with _grad_context(grad):
                yield recorder
        finally:
            for handle in handles:
                handle.remove()


AblationMode = str  # "identity" | "mean"


@contextlib.contextmanager
def ablate(model: nn.Module, blocks: Sequence[SEBlock], mode: AblationMode = "identity",
           means: Mapping[str, np.ndarray | torch.Tensor] | None = None, *, grad: bool = False) -> Iterator[None]:
    """Replace the gates of ``blocks`` inside the ``with`` block.

    ``mode="identity"``: every gate is 1, so the block passes its input through (the paper's SE removal); for a
    block whose output the network multiplies by a gain (NFNet's ``attn_gain``) the gate is ``1 / gain``
    (:attr:`SEBlock.identity_gate`), so that the block's effective scale is 1.
    ``mode="mean"``: every gate is the constant per-channel vector ``means[block.name]`` (length C), e.g. the
    block's mean gate over a calibration set: the input-dependent excitation is frozen to a fixed scale.
    """
    if mode not in ("identity", "mean"):
        raise ValueError(f"ablation mode must be 'identity' or 'mean', not {mode!r}")
    constants: dict[str, torch.Tensor] = {}
    if mode == "mean":
        means = means or {}
        for b in blocks:
            if b.name not in means:
                raise ValueError(f"mode='mean' needs a mean gate vector for {b.name}; compute it on calibration images")
            vec = torch.as_tensor(np.asarray(means[b.name], dtype=np.float32)).flatten()
            if vec.numel() != b.channels:
                raise ValueError(
                    f"mean gate for {b.name} has {vec.numel()} values, the block has {b.channels} channels")
            constants[b.name] = vec

    def replace(block: SEBlock):
        identity = block.identity_gate

        def hook(_module, _inputs, out: torch.Tensor) -> torch.Tensor:
            if mode == "identity":
                return torch.ones_like(out) if identity == 1.0 else torch.full_like(out, identity)
            vec = constants[block.name].to(device=out.device, dtype=out.dtype)
            if out.dim() > 2 and out.shape[1] == 1 and out.shape[-1] == vec.numel():
                return vec.view(*([1] * (out.dim() - 1)), -1).expand_as(out)  # ECA's N x 1 x C gate
            return vec.view(1, -1, *([1] * (out.dim() - 2))).expand_as(out)
        return hook

    handles = []
    with model_lock(model):
        try:
            for block, gate in _modules(model, blocks):
                # prepend: the replacement runs before any capture hook on the same gate, so a recorder sees
                # the gate the network used whichever of capture()/ablate() was entered first.
                handles.append(gate.register_forward_hook(replace(block), prepend=True))
            with _grad_context(grad):
                yield
        finally:
            for handle in handles:
                handle.remove()
