"""Activations a full pass keeps per image for tail replay (:mod:`senet_viz.inference.tail`): which cuts
(:func:`cuts_to_keep`, the last stage's), within what budget (:func:`cuts_budget_bytes`), and how they are held
(:class:`KeptCuts`, read-only arrays inside the pass's :class:`~senet_viz.inference.run.Result`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from senet_viz.gates.kinds import SEBlock
from senet_viz.inference.tail import Cut, TailPlan
from senet_viz.settings import env_int

__all__ = ["CUTS_MB_ENV", "CutCollector", "KeptCuts", "cuts_budget_bytes", "cuts_to_keep", "to_host"]

CUTS_MB_ENV = "SENET_VIZ_CUTS_MB"
_RESULTS_MB_ENV = "SENET_VIZ_RESULTS_MB"
_RESULTS_MB_DEFAULT = 2048  # ui/serving.py BUDGETS_MB["SENET_VIZ_RESULTS_MB"]; the library does not import ui


def cuts_budget_bytes() -> int:
    """Bytes a full pass may keep of cut activations (:class:`KeptCuts`): ``$SENET_VIZ_CUTS_MB`` MiB, else a quarter
    of ``$SENET_VIZ_RESULTS_MB`` (default 2048, so 512 MiB). They live inside the cached result, so the result
    cache's own byte budget counts them too."""
    results_mb = env_int(_RESULTS_MB_ENV, _RESULTS_MB_DEFAULT, minimum=1)
    return env_int(CUTS_MB_ENV, results_mb // 4, minimum=0) * 2**20


@dataclass
class KeptCuts:
    """Activations at ``cuts`` kept per image by a full pass (row i: image i of its :class:`Result`), read-only,
    in the dtype the network computed them in (bfloat16 stored as its 16-bit pattern)."""

    cuts: tuple[Cut, ...]
    arrays: dict[str, np.ndarray]  # cut node -> (N, *shape)
    dtypes: dict[str, str]  # cut node -> torch dtype name ("float32", "bfloat16", ...)
    note: str = ""  # which cuts were left out for the budget

    def cut(self, wanted: Cut | None) -> Cut | None:
        """``wanted`` if its activations are kept."""
        return wanted if wanted is not None and wanted.node in self.arrays else None

    def rows(self, node: str, rows: np.ndarray | slice) -> torch.Tensor:
        """The activations of images ``rows`` at cut ``node`` as a (new, writable) CPU tensor."""
        arr = np.array(self.arrays[node][rows])  # a copy: torch would warn on a read-only array
        t = torch.from_numpy(arr)
        return t.view(torch.bfloat16) if self.dtypes[node] == "bfloat16" else t

    def select(self, rows: np.ndarray) -> KeptCuts:
        """The activations of images ``rows`` only (read-only copies)."""
        arrays = {k: _read_only(np.ascontiguousarray(v[rows])) for k, v in self.arrays.items()}
        return KeptCuts(self.cuts, arrays, dict(self.dtypes), self.note)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


def _read_only(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def to_host(t: torch.Tensor) -> np.ndarray:
    """A device activation as a host array (bfloat16 as its bit pattern, see :class:`KeptCuts`)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.to("cpu").numpy()


@dataclass
class CutCollector:
    """Accumulates the activations at ``cuts`` batch by batch, for a :class:`KeptCuts`."""

    cuts: tuple[Cut, ...]
    note: str = ""
    chunks: dict[str, list[np.ndarray]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)

    def add(self, activations: Sequence[torch.Tensor]) -> None:
        for cut, a in zip(self.cuts, activations, strict=True):
            name = self.dtypes.setdefault(cut.node, str(a.dtype).removeprefix("torch."))
            if str(a.dtype).removeprefix("torch.") != name:  # a batch redone in fp32: one dtype per array
                a = a.to(getattr(torch, name))
            self.chunks.setdefault(cut.node, []).append(to_host(a))

    def result(self) -> KeptCuts | None:
        if not self.cuts:
            return None
        arrays = {}
        for c in self.cuts:
            chunks = self.chunks.get(c.node, [])
            arrays[c.node] = _read_only(np.concatenate(chunks) if chunks else np.zeros((0, *c.shape), np.float32))
            self.dtypes.setdefault(c.node, str(c.dtype).removeprefix("torch."))
        return KeptCuts(self.cuts, arrays, self.dtypes, self.note)


def cuts_to_keep(plan: TailPlan, blocks: Sequence[SEBlock], n_images: int, itemsize: int,
                 budget: int | None = None) -> tuple[tuple[Cut, ...], str]:
    """The cuts a full pass keeps for ``n_images`` images (``itemsize`` bytes per element) and why others are not:
    the cut before the last stage's first gate first, then those before its later gates while the activations
    fit in ``budget`` bytes (None: :func:`cuts_budget_bytes`). None at all when the first does not fit."""
    budget = cuts_budget_bytes() if budget is None else budget
    if not blocks or plan.reason:
        return (), plan.reason or "the network has no SE block"
    last = max(b.stage for b in blocks)
    wanted: list[Cut] = []
    for b in sorted((b for b in blocks if b.stage == last), key=lambda b: b.order):
        c = plan.cut_of(b)
        if c is not None and c not in wanted:
            wanted.append(c)
    if not wanted:
        return (), plan.why_not([min((b for b in blocks if b.stage == last), key=lambda b: b.order)])
    kept, used, left_out = [], 0, []
    for c in wanted:
        need = c.bytes_per_image(itemsize) * n_images
        if used + need <= budget:
            kept.append(c)
            used += need
        else:
            left_out.append(c)
    if not kept:
        need = wanted[0].bytes_per_image(itemsize) * n_images
        return (), (f"the activations of {n_images} images at {wanted[0].where} need {need / 2**20:.0f} MiB, over "
                    f"the {budget / 2**20:.0f} MiB budget for kept activations ({CUTS_MB_ENV})")
    note = f"{len(left_out)} later cut(s) not kept for the {budget / 2**20:.0f} MiB budget ({CUTS_MB_ENV})" \
        if left_out else ""
    return tuple(kept), note
