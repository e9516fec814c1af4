"""Which SE blocks a judgement may use: constant gates (switched off, or scaling by a fixed s) and blocks by role.

A block whose gate is the same for every image (largest per-channel std over all images below :data:`INERT_STD`)
carries no image- or class-dependent signal. Two kinds:

- **switched off**: every gate is exactly 1 (within :data:`ONE_TOL`, e.g. MobileNetV3's hard-sigmoid clipped at 1):
  the block is an identity, removing it changes nothing;
- **constant**: any other fixed value (e.g. every gate 0.5): the block scales its channels by a fixed s, so removing
  it *does* change the network; it is not switched off.

Neither counts as an active block for the class-specificity claims (:mod:`senet_viz.analysis.verdict`) or the
selectivity depth trend (:func:`senet_viz.analysis.channels.depth_trend`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pandas as pd

INERT_STD = 1e-4
"""A block's gate is constant when no channel's gate varies more than this (std over all images)."""
ONE_TOL = 1e-6
"""A constant gate counts as exactly 1 (switched off) when every gate is >= 1 - ONE_TOL."""

Kind = Literal["switched off", "constant"]


@dataclass(frozen=True)
class InertBlock:
    """A block whose gate never changes from image to image."""

    block: str
    value: str  # "1", "0.500" or "0.120–0.980" (constant per channel)
    std_max: float
    kind: Kind = "switched off"

    @property
    def reason(self) -> str:
        """A few words: "switched off (every gate = 1)" or "constant (scales channels by s=0.500)"."""
        if self.kind == "switched off":
            return "switched off (every gate = 1)"
        return f"constant (scales channels by s={self.value})"

    @property
    def text(self) -> str:
        if self.kind == "switched off":
            return f"{self.block}: every gate = 1: the block is switched off"
        if "–" in self.value:
            return f"{self.block}: every gate constant per channel: {self.reason}"
        return f"{self.block}: every gate = {self.value}: {self.reason}"


def inert_block(block: str, n_images: int, std_max: float, gate_min: float, gate_max: float) -> InertBlock | None:
    """The block as an :class:`InertBlock` when its gate is the same for every image, else None (also with fewer
    than 2 images or an unknown std: nothing to say)."""
    if n_images < 2 or math.isnan(std_max) or std_max >= INERT_STD:
        return None
    if gate_min >= 1 - ONE_TOL:
        return InertBlock(block, "1", std_max, "switched off")
    value = f"{(gate_min + gate_max) / 2:.3f}" if gate_max - gate_min < 1e-3 else f"{gate_min:.3f}–{gate_max:.3f}"
    return InertBlock(block, value, std_max, "constant")


def inert_of_row(row: pd.Series) -> InertBlock | None:
    """:func:`inert_block` from a row with ``block``, ``n_images``, ``all_std_max``, ``gate_min``, ``gate_max`` (a row
    of :meth:`GateStats.indices` or :func:`senet_viz.analysis.channels.block_summary`); None when columns lack."""
    try:
        return inert_block(str(row["block"]), int(row["n_images"]), float(row["all_std_max"]),
                           float(row["gate_min"]), float(row["gate_max"]))
    except KeyError:
        return None


# ---------------------------------------------------------------------------------------------- blocks by role


@dataclass(frozen=True)
class Roles:
    """The blocks the paper's claims are judged on, chosen by role, with the words that say which and why."""

    early: pd.Series | None  # the last active block of the earliest stage that has an active block
    early_text: str
    saturation: pd.Series  # the middle block of the last stage (SE_5_2's role)
    saturation_text: str
    last: pd.Series  # the last block of the last stage (SE_5_3's role)
    last_text: str


def choose_roles(idx: pd.DataFrame, inert: set[str]) -> Roles:
    """Blocks by role from per-block rows (``block``, ``stage``, ``order``), ``inert`` the blocks left out of
    the class-specificity claims. With two blocks in the last stage the saturation claim takes the first and the
    similarity claim the last; with one, both take it (and say so)."""
    table = idx.sort_values("order", kind="stable")
    active = table[~table["block"].isin(inert)]
    early, early_text = None, "every block's gate is constant"
    if not active.empty:
        stage = int(active["stage"].iloc[0])
        in_stage = table[table["stage"] == stage]
        early = active[active["stage"] == stage].iloc[-1]
        early_text = f"the last block of stage {stage}, the earliest stage with an active block"
        if str(early["block"]) != str(in_stage["block"].iloc[-1]):
            early_text = (f"the last active block of stage {stage}, the earliest stage with an active block "
                          f"({in_stage['block'].iloc[-1]} after it is constant)")
    last_stage = int(table["stage"].max())
    rows = table[table["stage"] == last_stage]
    n = len(rows)
    sat, last = rows.iloc[(n - 1) // 2], rows.iloc[-1]
    if n == 1:
        pair = f"; stage {last_stage} has one SE block, so the saturation and similarity claims both use it"
    elif n == 2:
        pair = (f"; stage {last_stage} has two SE blocks: the saturation claim uses the first, the similarity "
                f"claim the last")
    else:
        pair = ""
    sat_text = f"middle block of the last stage {last_stage}, SE_5_2's role{pair}"
    last_text = f"last block of the last stage {last_stage}, SE_5_3's role{pair}"
    return Roles(early, early_text, sat, sat_text, last, last_text)
