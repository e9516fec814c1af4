"""A plain verdict of one network's gates against the SENet paper's "role of excitation" findings.

The paper (Hu et al., TPAMI 2019, Fig. 6/7) reports four things about SE-ResNet-50 on ImageNet:

1. early blocks are class-agnostic: the class-mean gate curves nearly coincide;
2. class specificity rises with depth;
3. SE_5_2 saturates: most of its gates are close to 1, so the block is close to an identity;
4. SE_5_3 (the last block) shows a similar pattern across classes, up to a scale.

:func:`paper_verdict` tests each claim on the per-block indices of :meth:`senet_viz.analysis.stats.GateStats.indices`
and says which ones this network shows, with the numbers. A block whose gate is constant over all images
(largest per-channel std below :data:`INERT_STD`, e.g. MobileNetV3's hard-sigmoid clipped at 1) is *inert*:
switched off, which is neither class-agnostic nor saturated in the paper's sense, so it is reported apart and
left out of claims 1 and 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from senet_viz.analysis.correlation import spearman
from senet_viz.analysis.stats import GateStats
from senet_viz.analysis.stats_accumulate import DEFAULT_THRESHOLD

AGNOSTIC_SPREAD = 0.05
"""Early blocks count as class-agnostic when their class-mean spread is below this."""
RISING_RHO = 0.5
"""Specificity counts as rising with depth when Spearman's rho (spread vs block position) exceeds this."""
SATURATED_SHARE = 0.5
"""A block counts as saturated when at least this share of channels has mean gate >= the index threshold."""
SIMILAR_CORR = 0.9
"""The last block counts as "similar across classes up to a scale" at a cross-class correlation >= this."""
INERT_STD = 1e-4
"""A block is inert when no channel's gate varies more than this (std over all images)."""
MIN_TREND_BLOCKS = 3

GLOSSARY = """
- **Gate s**: the output of an SE block's sigmoid (hard-sigmoid in MobileNetV3), in [0, 1]; it multiplies one
  channel of the block's feature map. s = 1 passes the channel unchanged, s = 0 silences it.
- **`SE_<stage>_<block>`**: the stage is the output-stride level at the block, log2(input size / feature-map size);
  for ResNets exactly the paper's conv2_x..conv5_x (stages 2..5). Blocks are numbered from 1 in execution order,
  so `SE_5_2` is the second SE block of stage 5.
- **eta²** (`eta2`; the specificity when classes have 2+ images): the share of gate variance explained by class,
  pooled over the block's channels: Σ_c B_c / Σ_c (B_c + W_c), with B_c the between-class and W_c the
  within-class variance of channel c. It is scale-free: a block whose gates hardly move can still have most of
  its tiny variance between classes.
- **spread**: how far apart the class-mean curves are, in absolute terms (the std of the class means relative to
  the largest possible at that mean gate). The paper's "class-agnostic" is about this distance.
"""
"""Markdown that explains the gate, the block names and eta² vs spread (shown by the app's pages)."""


def thresholds_markdown(threshold: float = DEFAULT_THRESHOLD) -> str:
    """Markdown bullet with the verdict's thresholds (``threshold``: the saturation index's mean-gate level)."""
    return (f"- **Verdict thresholds**: class-agnostic when spread < {AGNOSTIC_SPREAD}; rising when Spearman's rho "
            f"of spread vs block position > {RISING_RHO}; saturated when ≥ {SATURATED_SHARE:.0%} of channels have "
            f"mean gate ≥ {threshold:g}; similar up to a scale when the class-mean gate vectors correlate ≥ "
            f"{SIMILAR_CORR} on average (Pearson correlation ignores scale). A block whose gate never changes "
            f"(std < {INERT_STD:g} in every channel) is *switched off* and left out of the first two claims.\n")

Status = Literal["shown", "not shown", "not testable"]


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims, judged on this network."""

    key: str  # "early_agnostic", "rising", "saturation", "last_similar"
    paper: str  # the claim in the paper's words
    status: Status
    blocks: tuple[str, ...]  # the blocks the judgement used
    detail: str  # what was measured, with the numbers
    short: str  # a few words for the summary line


@dataclass(frozen=True)
class InertBlock:
    block: str
    value: str  # "1", "0.500" or "0.120–0.980" (constant per channel)
    std_max: float

    @property
    def text(self) -> str:
        if self.value == "1":
            return f"{self.block}: every gate = 1: the block is switched off"
        if "–" in self.value:
            return f"{self.block}: every gate constant per channel ({self.value}): the block is switched off"
        return f"{self.block}: every gate = {self.value}: the block is switched off"


@dataclass(frozen=True)
class Verdict:
    model: str
    claims: list[Claim]
    inert: list[InertBlock]
    one_image_per_class: bool  # every class has a single image
    single_image_classes: bool  # at least one class has a single image
    notes: list[str] = field(default_factory=list)  # caveats (one image per class, ...)
    threshold: float = DEFAULT_THRESHOLD  # the saturation index's mean-gate level the indices were computed with

    @property
    def shown(self) -> list[Claim]:
        return [c for c in self.claims if c.status == "shown"]

    @property
    def testable(self) -> list[Claim]:
        return [c for c in self.claims if c.status != "not testable"]

    @property
    def summary(self) -> str:
        """One line: which parts of the paper's pattern this network shows and which not, with the numbers."""
        parts = [f"{self.model} shows {len(self.shown)} of {len(self.testable)} testable parts of the paper's pattern"]
        for status in ("shown", "not shown", "not testable"):
            claims = [c.short for c in self.claims if c.status == status]
            if claims:
                parts.append(f"{status.capitalize()}: " + "; ".join(claims))
        if self.inert:
            parts.append(f"Switched off (constant gate): {', '.join(b.block for b in self.inert)}")
        return ". ".join(parts) + "."

    @property
    def inert_markdown(self) -> str:
        """Markdown naming the switched-off blocks and why they are set apart ("" when there is none)."""
        if not self.inert:
            return ""
        return (f"Switched off (the gate is the same for every image, std < {INERT_STD:g} in every channel; "
                "neither class-agnostic nor saturated in the paper's sense):\n\n"
                + "\n".join(f"- {b.text}" for b in self.inert))

    @property
    def how_to_read(self) -> str:
        """Markdown: the glossary (gate, block names, eta² vs spread) and the thresholds of this verdict."""
        return GLOSSARY + thresholds_markdown(self.threshold)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([{"paper": c.paper, "this network": c.status, "blocks": ", ".join(c.blocks),
                              "measured": c.detail} for c in self.claims])


# ---------------------------------------------------------------------------------------------- helpers


def _fmt(v: float, spec: str = ".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _inert(row: pd.Series) -> InertBlock | None:
    std = float(row.get("all_std_max", float("nan")))
    if row["n_images"] < 2 or math.isnan(std) or std >= INERT_STD:
        return None
    lo, hi = float(row["gate_min"]), float(row["gate_max"])
    if lo >= 1 - 1e-3:
        value = "1"
    elif hi - lo < 1e-3:
        value = f"{(lo + hi) / 2:.3f}"
    else:
        value = f"{lo:.3f}–{hi:.3f}"
    return InertBlock(str(row["block"]), value, std)


def _by_name(idx: pd.DataFrame, name: str) -> pd.Series | None:
    hit = idx[idx["block"] == name]
    return hit.iloc[0] if len(hit) else None


def _paper_block(idx: pd.DataFrame, name: str, position: Literal["middle", "last"]) -> tuple[pd.Series, str]:
    """The paper's block ``name`` if present, else the middle / last block of the last stage (and why)."""
    row = _by_name(idx, name)
    if row is not None:
        return row, ""
    last = idx[idx["stage"] == idx["stage"].max()].sort_values("order")
    row = last.iloc[(len(last) - 1) // 2] if position == "middle" else last.iloc[-1]
    return row, f" (no {name} in this network: the {position} block of its last stage is used)"


# ---------------------------------------------------------------------------------------------- claims


def _early(active: pd.DataFrame, early_inert: list[InertBlock]) -> Claim:
    """Judged on the earliest active block; inert blocks before it are named, not judged."""
    paper = "Early blocks are class-agnostic (class-mean curves nearly coincide)"
    skipped = f"; earlier blocks switched off: {', '.join(b.block for b in early_inert)}" if early_inert else ""
    if active.empty:
        return Claim("early_agnostic", paper, "not testable", (), "every block is switched off",
                     "early class-agnosticism (every block switched off)")
    row = active.iloc[0]
    spread = float(row["spread"])
    if math.isnan(spread):
        return Claim("early_agnostic", paper, "not testable", (row["block"],),
                     f"needs 2+ classes{skipped}", "early class-agnosticism (needs 2+ classes)")
    agnostic = spread < AGNOSTIC_SPREAD
    word = "class-agnostic" if agnostic else "already class-specific"
    detail = (f"earliest active block {row['block']} (stage {int(row['stage'])}): class-mean spread {spread:.3f} "
              f"{'<' if agnostic else '≥'} {AGNOSTIC_SPREAD} → {word}; eta² {_fmt(float(row['eta2']))}{skipped}")
    return Claim("early_agnostic", paper, "shown" if agnostic else "not shown", (row["block"],), detail,
                 f"earliest active block {row['block']} {word} (spread {spread:.3f})")


def _rising(active: pd.DataFrame) -> Claim:
    paper = "Class specificity rises with depth"
    blocks = tuple(active["block"])
    spread = active["spread"].to_numpy(dtype=float)
    if len(active) < MIN_TREND_BLOCKS or np.isnan(spread).any():
        why = "needs 2+ classes" if np.isnan(spread).any() else f"needs {MIN_TREND_BLOCKS}+ active blocks"
        return Claim("rising", paper, "not testable", blocks, f"{why} ({len(active)} active)",
                     f"rise with depth ({why})")
    pos = active["order"].to_numpy(dtype=float)
    rho, _ = spearman(pos, spread, permutations=0)
    half = len(spread) // 2
    first, second = float(spread[:half].mean()), float(spread[-half:].mean())
    eta2 = active["eta2"].to_numpy(dtype=float)
    eta_text = ""
    if not np.isnan(eta2).any():
        eta_text = f"; eta² rho {_fmt(spearman(pos, eta2, permutations=0)[0], '.2f')}"
    rising = not math.isnan(rho) and rho > RISING_RHO
    detail = (f"Spearman rho of spread vs block position {_fmt(rho, '.2f')} over {len(active)} active blocks "
              f"({'>' if rising else '≤'} {RISING_RHO} → {'rising' if rising else 'no clear rise'}); mean spread "
              f"first half {first:.3f}, second half {second:.3f}{eta_text}")
    return Claim("rising", paper, "shown" if rising else "not shown", blocks, detail,
                 f"specificity {'rises' if rising else 'does not clearly rise'} with depth (rho {_fmt(rho, '.2f')})")


def _saturation(idx: pd.DataFrame, inert: dict[str, InertBlock]) -> Claim:
    paper = "SE_5_2 gates saturate near 1 (most gates ≈ 1: close to an identity)"
    row, note = _paper_block(idx, "SE_5_2", "middle")
    name = str(row["block"])
    if name in inert:
        return Claim("saturation", paper, "not testable", (name,), f"{inert[name].text}{note}",
                     f"{name} saturation ({name} switched off)")
    share, thr = float(row["saturation"]), float(row["threshold"])
    saturated = share >= SATURATED_SHARE
    detail = (f"{name}: {share:.0%} of channels with mean gate ≥ {thr:g} "
              f"({'≥' if saturated else '<'} {SATURATED_SHARE:.0%} → {'saturated' if saturated else 'not saturated'})"
              f", mean gate {float(row['mean_gate']):.3f}, mean |1 − s| {float(row['mean_abs_1_minus_s']):.3f}{note}")
    return Claim("saturation", paper, "shown" if saturated else "not shown", (name,), detail,
                 f"{name} {'saturated' if saturated else 'not saturated'} ({share:.0%} of channels ≥ {thr:g})")


def _last_similar(idx: pd.DataFrame, inert: dict[str, InertBlock]) -> Claim:
    paper = "SE_5_3 shows a similar pattern across classes, up to a scale"
    row, note = _paper_block(idx, "SE_5_3", "last")
    name = str(row["block"])
    if name in inert:
        return Claim("last_similar", paper, "not testable", (name,), f"{inert[name].text}{note}",
                     f"{name} similarity ({name} switched off)")
    corr = float(row["cross_class_corr"])
    if math.isnan(corr):
        return Claim("last_similar", paper, "not testable", (name,), f"needs 2+ classes{note}",
                     f"{name} similarity (needs 2+ classes)")
    similar = corr >= SIMILAR_CORR
    word = "similar up to scale" if similar else "different patterns"
    detail = (f"{name}: mean correlation of the class-mean gate vectors {corr:.2f} "
              f"({'≥' if similar else '<'} {SIMILAR_CORR} → {word}){note}")
    return Claim("last_similar", paper, "shown" if similar else "not shown", (name,), detail,
                 f"{name} {'similar' if similar else 'not similar'} across classes (r {corr:.2f})")


# ---------------------------------------------------------------------------------------------- entry point


def paper_verdict(stats_or_indices: GateStats | pd.DataFrame, model: str | None = None) -> Verdict:
    """Judge the paper's four claims on one model's per-block indices (or on its :class:`GateStats`)."""
    idx = stats_or_indices.indices() if isinstance(stats_or_indices, GateStats) else stats_or_indices
    if "model" in idx and idx["model"].nunique() > 1:
        if model is None:
            raise ValueError(f"indices of several models {sorted(idx['model'].unique())}: pass model=...")
        idx = idx[idx["model"] == model]
    if idx.empty:
        raise ValueError("no block statistics to judge")
    idx = idx.sort_values("order").reset_index(drop=True)
    name = model or str(idx["model"].iloc[0])
    inert = [b for b in (_inert(r) for _, r in idx.iterrows()) if b is not None]
    inert_names = {b.block: b for b in inert}
    active = idx[~idx["block"].isin(inert_names)]

    min_count = int(idx["min_class_count"].min()) if "min_class_count" in idx else 0
    max_count = int(idx["max_class_count"].max()) if "max_class_count" in idx else 0
    one_each = max_count == 1
    notes = []
    if one_each:
        notes.append("Every class has one image: eta² cannot be computed (the spread of the class means is used "
                     "instead), and neither can Fig. 7's ±1 std bands or percentiles within a class. The spread then "
                     "also holds the image-to-image variation inside a class, so it overstates class specificity.")
    elif min_count == 1:
        notes.append("Some classes have a single image: their Fig. 7 ±1 std band and within-class percentiles "
                     "cannot be computed, and they add nothing to eta²'s within-class variance.")

    first_active_order = int(active["order"].iloc[0]) if not active.empty else None
    early_inert = [b for b in inert if first_active_order is None
                   or int(idx.loc[idx["block"] == b.block, "order"].iloc[0]) < first_active_order]
    claims = [_early(active, early_inert), _rising(active), _saturation(idx, inert_names),
              _last_similar(idx, inert_names)]
    threshold = float(idx["threshold"].iloc[0]) if "threshold" in idx else DEFAULT_THRESHOLD
    return Verdict(model=name, claims=claims, inert=inert, one_image_per_class=one_each,
                   single_image_classes=min_count == 1, notes=notes, threshold=threshold)
