"""Streaming per-class statistics of SE gates over every block of one model (:class:`GateAccumulator`): the
batch update, the exact merge, the policy for per-channel histograms and the plain-data state that files and
other processes read (:meth:`GateAccumulator.state` / :meth:`GateAccumulator.from_state`). What each block keeps
is in :mod:`senet_viz.analysis.stats_block`.

Which classes keep per-channel histograms (``detail_classes``): ``None`` (auto, the default) keeps them for every
class as long as at most ``max_detail_classes`` (64) distinct classes have been seen, and for none once more have
(then they are dropped and never rebuilt); an explicit list of class indices or names keeps them for exactly
those. SE-ResNet-50 (16 blocks, 15,104 channels) over the 1,000 ImageNet classes with 50 bins and no detailed
class: 16 x 1000 x 15104 B = 242 MB + 16 x 440 kB + 6.5 MB, about 255 MB; 64 detailed classes of 64 add
64 x 15104 x 416 B = 402 MB.

:meth:`GateAccumulator.merge` is exact for counts, means and M2 (Chan et al.), histograms, min and max. A class
keeps its detailed histograms after a merge only when both parts have them complete (kept, or the class absent
from that part) and the policy allows them (auto: at most ``max_detail_classes`` classes in the union).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np

from senet_viz.analysis.stats_block import BlockAccumulator

ALL = "all"
DEFAULT_BINS = 50
DEFAULT_THRESHOLD = 0.9
MAX_DETAIL_CLASSES = 64
"""Auto policy: per-channel histograms of every class while at most this many classes have been seen."""
UPDATE_BYTES = 8 << 20
"""Largest float64 copy of gates one update step makes (a larger batch is added in slices)."""


class UnknownName(KeyError, ValueError):
    """An unknown block or class name: a KeyError for lookups and a ValueError for input checks (message as is)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class BlockInfo:
    name: str
    stage: int
    order: int
    channels: int


def _resolve_detail(class_names: Sequence[str], detail: Iterable[int | str] | None) -> tuple[int, ...] | None:
    if detail is None:
        return None
    lookup = {n: i for i, n in enumerate(class_names)}
    out = []
    for c in detail:
        if isinstance(c, (int, np.integer)) or (isinstance(c, str) and c.isdigit() and c not in lookup):
            out.append(int(c))
        elif c in lookup:
            out.append(lookup[c])
        else:
            more = " …" if len(class_names) > 10 else ""
            raise UnknownName(f"unknown class {c!r} in detail_classes; classes are {list(class_names)[:10]}{more}")
    return tuple(sorted(set(out)))


@dataclass
class GateAccumulator:
    """Per-class, per-channel gate statistics of every block of one model; streaming and mergeable.

    ``detail_classes``: classes (indices) whose per-channel histograms are kept; ``None`` = auto (every class while
    at most ``max_detail_classes`` distinct classes are seen, none after). See the module doc for the layout.
    """

    model: str
    blocks: list[BlockInfo]
    class_names: list[str]
    bins: int = DEFAULT_BINS
    detail_classes: tuple[int, ...] | None = None
    max_detail_classes: int = MAX_DETAIL_CLASSES
    accumulators: dict[str, BlockAccumulator] = field(default_factory=dict, repr=False)
    _seen: set[int] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        for b in self.blocks:
            if b.name not in self.accumulators:
                self.accumulators[b.name] = BlockAccumulator(b.channels, self.bins, len(self.class_names))

    @classmethod
    def for_blocks(cls, model: str, blocks: Iterable, class_names: Sequence[str], bins: int = DEFAULT_BINS,
                   detail_classes: Iterable[int | str] | None = None,
                   max_detail_classes: int = MAX_DETAIL_CLASSES) -> Self:
        """From SEBlock objects or dicts with name/stage/channels (order = position). ``detail_classes``: class
        indices or names whose per-channel histograms are kept (``None``: auto, ``[]``: none)."""
        infos = []
        for i, b in enumerate(blocks):
            get = b.get if isinstance(b, Mapping) else lambda k, b=b: getattr(b, k)
            infos.append(BlockInfo(get("name"), int(get("stage")), i, int(get("channels"))))
        return cls(model=model, blocks=infos, class_names=list(class_names), bins=bins,
                   detail_classes=_resolve_detail(class_names, detail_classes),
                   max_detail_classes=int(max_detail_classes))

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        """The exact, mergeable state as plain data (numbers, strings, lists and read-only views of the arrays, no
        copy): ``model``, ``blocks`` (dicts of name, stage, order, channels), ``class_names``, ``bins``,
        ``detail_classes``, ``max_detail_classes``, ``seen`` (class indices) and ``accumulators`` (block name ->
        :meth:`BlockAccumulator.state`). :meth:`from_state` rebuilds an equal object."""
        return {"model": self.model, "blocks": [vars(b).copy() for b in self.blocks],
                "class_names": list(self.class_names), "bins": self.bins,
                "detail_classes": None if self.detail_classes is None else list(self.detail_classes),
                "max_detail_classes": self.max_detail_classes, "seen": sorted(self._seen),
                "accumulators": {b.name: self.accumulators[b.name].state() for b in self.blocks}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        """Statistics holding ``state`` (as :meth:`state` gives it; a block without an entry in ``accumulators``
        has seen no image). Shapes are checked (``ValueError``); writable arrays are taken over, read-only ones
        (another object's :meth:`state`) copied, so the result never shares memory with live statistics."""
        blocks = [BlockInfo(str(b["name"]), int(b["stage"]), int(b["order"]), int(b["channels"]))
                  for b in state["blocks"]]
        detail = state.get("detail_classes")
        names = list(state["class_names"])
        bins = int(state["bins"])
        accs = state.get("accumulators", {})
        unknown = sorted(set(accs) - {b.name for b in blocks})
        if unknown:
            raise UnknownName(f"unknown block {unknown[0]!r}; valid blocks: {[b.name for b in blocks]}")
        accumulators = {b.name: BlockAccumulator.from_state(accs[b.name], b.channels, bins, len(names), b.name)
                        for b in blocks if b.name in accs}
        return cls(model=str(state["model"]), blocks=blocks, class_names=names, bins=bins,
                   detail_classes=None if detail is None else tuple(int(k) for k in detail),
                   max_detail_classes=int(state.get("max_detail_classes", MAX_DETAIL_CLASSES)),
                   accumulators=accumulators, _seen={int(k) for k in state.get("seen", ())})

    # ------------------------------------------------------------------ updates

    def block_info(self, name: str) -> BlockInfo:
        """The block called ``name`` (:class:`UnknownName` listing the valid ones otherwise)."""
        for b in self.blocks:
            if b.name == name:
                return b
        raise UnknownName(f"unknown block {name!r}; valid blocks: {[b.name for b in self.blocks]}")

    def _detail_allowed(self, k: int) -> bool:
        if self.detail_classes is not None:
            return k in self.detail_classes
        return len(self._seen) <= self.max_detail_classes

    def _see(self, classes: Iterable[int]) -> None:
        """Record classes; under the auto policy, past ``max_detail_classes`` drop every per-class histogram."""
        self._seen.update(int(k) for k in classes)
        if self.detail_classes is None and len(self._seen) > self.max_detail_classes:
            for acc in self.accumulators.values():
                acc.detail.clear()

    def update(self, block: str, gates: np.ndarray, labels: np.ndarray) -> None:
        """Add a batch: ``gates`` (N, C) of block ``block`` with class indices ``labels`` (N,), -1 = unknown."""
        info = self.block_info(block)
        gates = np.asarray(gates)
        if gates.ndim != 2 or gates.shape[1] != info.channels:
            raise ValueError(f"{block}: gates of shape {gates.shape}, expected (N, {info.channels})")
        labels = np.asarray(labels, dtype=np.int64)
        if len(gates) == 0:
            return
        if labels.shape != (len(gates),):
            raise ValueError(f"{block}: {labels.shape} labels for {len(gates)} gate vectors")
        labels = np.where(labels < 0, -1, labels)
        present = np.unique(labels)
        self._see(present[present >= 0])
        if self.detail_classes is not None:
            detailed: set[int] | None = set(self.detail_classes)
        else:
            detailed = None if len(self._seen) <= self.max_detail_classes else set()
        # A batch is added in slices whose float64 copy stays under UPDATE_BYTES: the update's temporaries are a
        # few times that, whatever the batch (a whole run's gates at once included).
        step = max(1, UPDATE_BYTES // (8 * info.channels))
        acc = self.accumulators[block]
        for start in range(0, len(gates), step):
            acc.add(gates[start:start + step], labels[start:start + step], detailed)

    def reserve(self, classes: Iterable[int]) -> None:
        """Make room in every block for the class rows of ``classes`` (indices, ``-1`` ignored) that updates are
        about to bring: one allocation of the right size instead of growing (and copying) the rows as the classes
        arrive. Only for classes every block will see (a reserved class without images would count as a class)."""
        wanted = np.unique(np.asarray(list(classes), np.int64))
        wanted = wanted[wanted >= 0]
        for acc in self.accumulators.values():
            acc.reserve(wanted)

    def update_all(self, gates: Mapping[str, np.ndarray], labels: np.ndarray) -> None:
        for name, g in gates.items():
            self.update(name, g, labels)

    def merge(self, other: GateAccumulator) -> Self:
        """Add another part (e.g. another shard) into this one, in place; returns self."""
        if [(b.name, b.channels) for b in other.blocks] != [(b.name, b.channels) for b in self.blocks] \
                or other.bins != self.bins:
            raise ValueError("cannot merge statistics of different blocks or bin counts")
        if other.class_names != self.class_names:
            raise ValueError("cannot merge statistics with different class lists")
        self._see(other.classes())
        for b in self.blocks:
            self.accumulators[b.name].merge(other.accumulators[b.name], self._detail_allowed)
        return self

    # ------------------------------------------------------------------ classes

    def class_label(self, k: int) -> str:
        return ALL if k < 0 else (self.class_names[k] if k < len(self.class_names) else str(k))

    def classes(self) -> list[int]:
        """Indices of the classes seen (in any block), sorted."""
        return sorted(self._seen)

    def n_images(self, block: str | None = None) -> int:
        """Images behind the "all" statistics of ``block`` (default: the first block with any)."""
        accs = [self.accumulators[block]] if block else list(self.accumulators.values())
        return max((a.n for a in accs), default=0)

    def detailed_classes(self, block: str | None = None) -> list[int]:
        """Classes whose per-channel histograms are kept (in ``block``, default the first block)."""
        name = block or (self.blocks[0].name if self.blocks else None)
        return sorted(self.accumulators[name].detail) if name else []

    def resolve_classes(self, classes: str | int | Iterable[str | int] | None) -> list[int]:
        """Class indices of names / indices (``"all"`` is left out); ``None`` = every class seen."""
        if classes is None:
            return self.classes()
        wanted = [classes] if isinstance(classes, (str, int, np.integer)) else list(classes)
        by_name: dict[str, list[int]] = {}
        for k in self.classes():
            by_name.setdefault(self.class_label(k), []).append(k)
        seen = set(self._seen)
        out: list[int] = []
        for c in wanted:
            if isinstance(c, str) and c == ALL:
                continue
            if isinstance(c, (int, np.integer)) and int(c) in seen:
                out.append(int(c))
            elif str(c) in by_name:
                out.extend(by_name[str(c)])
            else:
                names = [self.class_label(k) for k in self.classes()]
                more = f" … +{len(names) - 10} more" if len(names) > 10 else ""
                raise UnknownName(f"unknown class {c!r}; valid classes: {names[:10]}{more}")
        return list(dict.fromkeys(out))

    def nbytes(self) -> int:
        """Bytes held by the accumulators of every block."""
        return sum(a.nbytes() for a in self.accumulators.values())
