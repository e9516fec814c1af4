"""A plain verdict of one network's gates against the SENet paper's "role of excitation" findings.

The paper (Hu et al., TPAMI 2019, Fig. 6/7) reports four things about SE-ResNet-50 on ImageNet:

1. early blocks are class-agnostic: the class-mean gate curves nearly coincide;
2. class specificity rises with depth;
3. SE_5_2 saturates: most of its gates are close to 1, so the block is close to an identity;
4. SE_5_3 (the last block) shows a similar pattern across classes, up to a scale.

:func:`paper_verdict` judges each claim on the per-block indices of
:meth:`senet_viz.analysis.stats.GateStats.indices`, beside their chance levels and bootstrap intervals when a chance
table (:func:`senet_viz.analysis.chance.chance_table`, or :func:`~senet_viz.analysis.chance.exact_chance`) is given.
Each claim is "shown", "not shown" or "cannot tell" (too few images per class, too few active blocks, no chance
level, an interval that spans the threshold), with the reason in its detail. Blocks are chosen by role, not by name
(:func:`senet_viz.analysis.verdict_blocks.choose_roles`). A block whose gate never changes is switched off (every
gate exactly 1) or constant (a fixed scale s): neither counts as active for claims 1 and 2.
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
from senet_viz.analysis.verdict_blocks import INERT_STD, InertBlock, choose_roles, inert_of_row

__all__ = ["AGNOSTIC_SPREAD", "GLOSSARY", "INERT_STD", "MIN_TREND_BLOCKS", "SATURATED_SHARE", "SIMILAR_CORR",
           "TREND_P", "Claim", "InertBlock", "Status", "Verdict", "paper_verdict", "thresholds_markdown"]

AGNOSTIC_SPREAD = 0.05
"""Early blocks count as class-agnostic when their chance-corrected class-mean spread is below this."""
TREND_P = 0.05
"""Specificity counts as rising with depth when eta²'s Spearman rho vs block order is > 0 with a p below this."""
MIN_TREND_BLOCKS = 5
"""The rise with depth needs this many active blocks (with 5 a perfect rank order has exact p 2/120 < 0.05)."""
SATURATED_SHARE = 0.5
"""A block counts as saturated when at least this share of channels has mean gate >= the index threshold."""
SIMILAR_CORR = 0.9
"""The last block counts as "similar across classes up to a scale" at a cross-class correlation >= this."""

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
- **Chance level**: what an index gives on the same images when the labels are shuffled among them (class sizes
  kept), i.e. with no class effect at all. Class means of few images differ by noise alone, so eta² (expected
  (K − 1)/(N − 1) for K classes and N images) and the spread are above 0 even then; an index means something only
  beside its chance level, and "above chance" only when a permutation test says so.
- **Interval**: a 95% bootstrap interval over images (resampled with Poisson weights): the range the index would
  plausibly take on another sample of images like these.
- **Cannot tell**: the data do not allow a judgement: one image per class (a class mean is then one image), too few
  active blocks for a trend, no chance level, or an interval that spans the threshold.
"""
"""Markdown that explains the gate, the block names, eta² vs spread, chance levels and intervals (shown by pages)."""


def thresholds_markdown(threshold: float = DEFAULT_THRESHOLD) -> str:
    """Markdown bullets with the verdict's rules (``threshold``: the saturation index's mean-gate level)."""
    return (f"- **Verdict rules**: *class-agnostic* when the whole interval of the spread minus its chance level is "
            f"below {AGNOSTIC_SPREAD} (not shown when it lies at or above it); *rising* when eta² (scale-free, with "
            f"the same chance level in every block) rises with block order: Spearman's rho > 0 with permutation "
            f"p < {TREND_P} over at least {MIN_TREND_BLOCKS} active blocks; *saturated* when ≥ "
            f"{SATURATED_SHARE:.0%} of channels have mean gate ≥ {threshold:g} (judged on the interval of that "
            f"share; a block whose every gate is exactly 1 is saturation in its extreme form); *similar up to a "
            f"scale* when the class-mean gate vectors correlate ≥ {SIMILAR_CORR} on average (Pearson correlation "
            f"ignores scale; judged on its interval, beside its chance level, and only where classes differ beyond "
            f"chance). Anything else in between is *cannot tell*.\n"
            f"- **Blocks by role**: claim 1 uses the last block of the earliest stage with an active block; claim 3 "
            f"the middle block of the last stage (SE_5_2's role), claim 4 its last block (SE_5_3's role); with two "
            f"blocks in the last stage claim 3 takes the first and claim 4 the last, with one both take it.\n"
            f"- **Constant blocks**: a block whose gate never changes (std < {INERT_STD:g} in every channel) is "
            f"*switched off* when every gate is exactly 1 (an identity), else *constant* (it scales its channels by a "
            f"fixed s, so it is not switched off); neither counts for the first two claims.\n")


Status = Literal["shown", "not shown", "cannot tell"]


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims, judged on this network."""

    key: str  # "early_agnostic", "rising", "saturation", "last_similar"
    paper: str  # the claim in the paper's words
    status: Status
    blocks: tuple[str, ...]  # the blocks the judgement used
    detail: str  # what was measured, with the numbers, and why this status
    short: str  # a few words for the summary line


@dataclass(frozen=True)
class Verdict:
    model: str
    claims: list[Claim]
    inert: list[InertBlock]  # switched-off and constant blocks, in depth order
    one_image_per_class: bool  # every class has a single image
    single_image_classes: bool  # at least one class has a single image
    notes: list[str] = field(default_factory=list)  # caveats (one image per class, no chance table, ...)
    threshold: float = DEFAULT_THRESHOLD  # the saturation index's mean-gate level the indices were computed with
    chance: bool = False  # whether a chance table was given

    @property
    def shown(self) -> list[Claim]:
        return [c for c in self.claims if c.status == "shown"]

    @property
    def testable(self) -> list[Claim]:
        return [c for c in self.claims if c.status != "cannot tell"]

    @property
    def switched_off(self) -> list[InertBlock]:
        return [b for b in self.inert if b.kind == "switched off"]

    @property
    def constant(self) -> list[InertBlock]:
        return [b for b in self.inert if b.kind == "constant"]

    @property
    def summary(self) -> str:
        """One line: how many testable parts this network shows, then each part by status, with the numbers."""
        parts = [f"{self.model} shows {len(self.shown)} of {len(self.testable)} testable parts of the paper's pattern"]
        for status in ("shown", "not shown", "cannot tell"):
            claims = [c.short for c in self.claims if c.status == status]
            if claims:
                parts.append(f"{status.capitalize()}: " + "; ".join(claims))
        if self.switched_off:
            parts.append(f"Switched off (every gate = 1): {', '.join(b.block for b in self.switched_off)}")
        if self.constant:
            parts.append("Constant gate: " + ", ".join(f"{b.block} (s={b.value})" for b in self.constant))
        return ". ".join(parts) + "."

    @property
    def inert_markdown(self) -> str:
        """Markdown naming the switched-off and constant blocks and why they are set apart ("" when there is none)."""
        if not self.inert:
            return ""
        return (f"Gate the same for every image (std < {INERT_STD:g} in every channel), so neither class-agnostic "
                "nor class-specific; left out of the first two claims:\n\n"
                + "\n".join(f"- {b.text}" for b in self.inert))

    @property
    def how_to_read(self) -> str:
        """Markdown: the glossary (gate, block names, eta² vs spread, chance) and the rules of this verdict."""
        return GLOSSARY + thresholds_markdown(self.threshold)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([{"paper": c.paper, "this network": c.status, "blocks": ", ".join(c.blocks),
                              "measured": c.detail} for c in self.claims])


# ---------------------------------------------------------------------------------------------- helpers


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _num(row: pd.Series | None, column: str) -> float:
    """``row[column]`` as a float, NaN when the row or the column is missing."""
    if row is None or column not in row.index:
        return float("nan")
    value = row[column]
    return float("nan") if value is None or pd.isna(value) else float(value)


def _chance_row(chance: pd.DataFrame | None, block: str) -> pd.Series | None:
    if chance is None or "block" not in chance:
        return None
    hit = chance[chance["block"].astype(str) == block]
    return hit.iloc[0] if len(hit) else None


def _interval(crow: pd.Series | None, index: str) -> tuple[float, float] | None:
    lo, hi = _num(crow, f"{index}_ci_lo"), _num(crow, f"{index}_ci_hi")
    return None if math.isnan(lo) or math.isnan(hi) else (lo, hi)


def _level(crow: pd.Series | None) -> str:
    level = _num(crow, "level")
    return f"{level:.0%}" if not math.isnan(level) else "95%"


def _above(crow: pd.Series | None) -> bool | None:
    """Whether the block's classes differ beyond chance (eta², or the spread where eta² is undefined: one test,
    not two); None when not known."""
    for index in ("eta2", "spread"):
        if crow is not None and f"{index}_above_chance" in crow.index and not math.isnan(_num(crow, index)):
            return bool(crow[f"{index}_above_chance"])
    return None


def _judge(point: float, interval: tuple[float, float] | None, threshold: float, below: bool) -> Status:
    """Shown when the interval (else the point value) lies wholly below (``below``) / at or above the threshold,
    not shown when wholly on the other side, else cannot tell."""
    lo, hi = interval if interval is not None else (point, point)
    if below:
        return "shown" if hi < threshold else "not shown" if lo >= threshold else "cannot tell"
    return "shown" if lo >= threshold else "not shown" if hi < threshold else "cannot tell"


def _single(row: pd.Series, crow: pd.Series | None) -> bool:
    """Every class of the block has one image (from the indices, or the chance table's reason)."""
    return _num(row, "max_class_count") == 1 or "one image per class" in str(
        crow.get("cannot_tell", "") if crow is not None else "")


ONE_EACH = "one image per class: a class mean is then one image, so class differences cannot be told from image noise"
NO_CHANCE = "no chance table (label permutations on these images), so its chance level and interval are unknown"


# ---------------------------------------------------------------------------------------------- claims


def _early(row: pd.Series | None, role: str, active: pd.DataFrame, chance: pd.DataFrame | None,
           skipped: str) -> Claim:
    paper = "Early blocks are class-agnostic (class-mean curves nearly coincide)"
    key = "early_agnostic"
    if row is None:
        return Claim(key, paper, "cannot tell", (), "every block's gate is constant",
                     "early class-agnosticism (every block constant)")
    name = str(row["block"])
    crow = _chance_row(chance, name)
    spread, eta2 = _num(row, "spread"), _num(row, "eta2")
    head = f"{name} ({role}): spread {_fmt(spread)}"

    def cannot(why: str, short: str) -> Claim:
        return Claim(key, paper, "cannot tell", (name,), f"{head}; cannot tell: {why}{skipped}",
                     f"early class-agnosticism ({short})")

    if _single(row, crow):
        return cannot(ONE_EACH, "one image per class")
    if chance is None:
        return cannot(f"{NO_CHANCE} (the spread of class means of few images is above 0 by noise alone)",
                      "no chance level")
    base = _num(crow, "spread_chance")
    if math.isnan(spread) or math.isnan(base):
        why = str(crow.get("cannot_tell", "")) if crow is not None else ""
        return cannot(f"spread or its chance level unknown{f' ({why})' if why else ''}", "chance unknown")
    corrected = spread - base
    ci = _interval(crow, "spread")
    interval = None if ci is None else (ci[0] - base, ci[1] - base)
    deepest = str(active["block"].iloc[-1])
    if _above(_chance_row(chance, deepest)) is False:  # claim 1 is the early half of a contrast with deep blocks
        return cannot(f"the deepest active block {deepest} shows no class effect beyond chance either, so an agnostic "
                      f"early block cannot be told apart from labels that carry no class signal at all",
                      f"no class effect beyond chance at {deepest} either")
    status = _judge(corrected, interval, AGNOSTIC_SPREAD, below=True)
    shown_ci = (f"{_level(crow)} interval [{interval[0]:.3f}, {interval[1]:.3f}]" if interval is not None
                else "no interval: judged on the point value")
    eta_chance = _num(crow, "eta2_chance_exact")
    if math.isnan(eta_chance) and _num(row, "n_images") > 1:
        eta_chance = (_num(row, "n_classes") - 1) / (_num(row, "n_images") - 1)
    wholly = "wholly " if interval is not None else ""
    word = {"shown": f"{wholly}< {AGNOSTIC_SPREAD} → class-agnostic",
            "not shown": f"{wholly}≥ {AGNOSTIC_SPREAD} → already class-specific",
            "cannot tell": f"spans {AGNOSTIC_SPREAD} → cannot tell"}[status]
    detail = (f"{head}, chance {base:.3f}, corrected {corrected:.3f} ({shown_ci}) {word}; eta² {_fmt(eta2)} "
              f"(chance {_fmt(eta_chance)}){skipped}")
    short = {"shown": "class-agnostic", "not shown": "already class-specific",
             "cannot tell": "interval spans the threshold"}[status]
    return Claim(key, paper, status, (name,), detail, f"{name} {short} (corrected spread {corrected:.3f})")


def _rising(active: pd.DataFrame, chance: pd.DataFrame | None) -> Claim:
    paper = "Class specificity rises with depth"
    blocks = tuple(map(str, active["block"]))
    eta2 = active["eta2"].to_numpy(dtype=float)
    if len(active) < MIN_TREND_BLOCKS:
        why = f"needs {MIN_TREND_BLOCKS}+ active blocks, {len(active)} here"
        return Claim("rising", paper, "cannot tell", blocks, f"cannot tell: {why}", f"rise with depth ({why})")
    if np.isnan(eta2).any():
        why = "needs classes with 2+ images (eta² undefined)"
        return Claim("rising", paper, "cannot tell", blocks, f"cannot tell: {why}", f"rise with depth ({why})")
    rho, p = spearman(active["order"].to_numpy(dtype=float), eta2, exact_max=10)
    k, n = _num(active.iloc[0], "n_classes"), _num(active.iloc[0], "n_images")
    exact = (k - 1) / (n - 1) if n > 1 else float("nan")
    rows = [_chance_row(chance, b) for b in blocks]
    above = [_above(r) for r in rows]
    if chance is None or all(a is None for a in above):
        base = "no chance table: whether each block's eta² is above chance is unknown"
        chance_text = f"{base} (expected with no class effect (K−1)/(N−1) = {_fmt(exact)})"
        n_above = None
    else:
        n_above = sum(bool(a) for a in above)
        chance_text = f"eta² chance (K−1)/(N−1) = {_fmt(exact)}; {n_above} of {len(blocks)} blocks above chance"
    rising = not math.isnan(rho) and rho > 0 and p < TREND_P
    if rising and n_above == 0:
        status, why = "not shown", "a rank trend, but no block's eta² is above chance"
    elif rising:
        status, why = "shown", "rising"
    else:
        status, why = "not shown", "no significant rise"
    op = "<" if p < TREND_P else "≥"
    detail = (f"Spearman rho of eta² vs block order {_fmt(rho, '.2f')}, exact permutation p {_fmt(p, '.3g')} "
              f"({op} {TREND_P}) over {len(active)} active blocks → {why}; eta² first {eta2[0]:.3f}, last "
              f"{eta2[-1]:.3f}; {chance_text}")
    word = "rises" if status == "shown" else "does not significantly rise"
    return Claim("rising", paper, status, blocks, detail,
                 f"specificity (eta²) {word} with depth (rho {_fmt(rho, '.2f')}, p {_fmt(p, '.2g')})")


def _saturation(row: pd.Series, role: str, inert: dict[str, InertBlock], chance: pd.DataFrame | None) -> Claim:
    paper = "SE_5_2 gates saturate near 1 (most gates ≈ 1: close to an identity)"
    name = str(row["block"])
    block = inert.get(name)
    if block is not None and block.kind == "switched off":
        return Claim("saturation", paper, "shown", (name,),
                     f"{name} ({role}): every gate is exactly 1 for every image: the paper's saturation in its "
                     f"extreme form (the block is an identity)", f"{name} saturated (every gate = 1)")
    crow = _chance_row(chance, name)
    share, thr = _num(row, "saturation"), _num(row, "threshold")
    ci = _interval(crow, "saturation")
    if ci is not None and abs(_num(crow, "saturation") - share) > 1e-9:
        ci = None  # the chance table was made at another threshold
    status = _judge(share, ci, SATURATED_SHARE, below=False)
    shown_ci = (f"{_level(crow)} interval [{ci[0]:.0%}, {ci[1]:.0%}]" if ci is not None
                else "no interval: judged on the point value")
    word = {"shown": "saturated", "not shown": "not saturated", "cannot tell": "interval spans the threshold"}[status]
    const = f"; {block.reason}" if block is not None else ""
    detail = (f"{name} ({role}): {share:.0%} of channels with mean gate ≥ {thr:g} ({shown_ci}; threshold "
              f"{SATURATED_SHARE:.0%}) → {word}; mean gate {_num(row, 'mean_gate'):.3f}, mean |1 − s| "
              f"{_num(row, 'mean_abs_1_minus_s'):.3f}{const}")
    return Claim("saturation", paper, status, (name,), detail, f"{name} {word} ({share:.0%} of channels ≥ {thr:g})")


def _last_similar(row: pd.Series, role: str, inert: dict[str, InertBlock], chance: pd.DataFrame | None) -> Claim:
    paper = "SE_5_3 shows a similar pattern across classes, up to a scale"
    key = "last_similar"
    name = str(row["block"])
    crow = _chance_row(chance, name)
    corr = _num(row, "cross_class_corr")

    def cannot(why: str, short: str) -> Claim:
        return Claim(key, paper, "cannot tell", (name,), f"{name} ({role}): cannot tell: {why}",
                     f"{name} similarity ({short})")

    if name in inert:
        return cannot(f"{inert[name].text}; the gate never varies, so there is no class pattern to compare",
                      inert[name].reason)
    if _single(row, crow):
        return cannot(ONE_EACH, "one image per class")
    if math.isnan(corr):
        return cannot("needs 2+ classes", "needs 2+ classes")
    base = _num(crow, "cross_class_corr_chance")
    if chance is None or math.isnan(base):
        return cannot(f"correlation {corr:.2f}; {NO_CHANCE}", "no chance level")
    if _above(crow) is False:
        return cannot(f"correlation {corr:.2f} (chance {base:.2f}), but the classes do not differ beyond chance "
                      f"here: a similar pattern would only mean no class effect", "no class effect beyond chance")
    ci = _interval(crow, "cross_class_corr")
    status = _judge(corr, ci, SIMILAR_CORR, below=False)
    shown_ci = (f"{_level(crow)} interval [{ci[0]:.2f}, {ci[1]:.2f}]" if ci is not None
                else "no interval: judged on the point value")
    word = {"shown": "similar up to a scale", "not shown": "different patterns",
            "cannot tell": "interval spans the threshold"}[status]
    detail = (f"{name} ({role}): mean correlation of the class-mean gate vectors {corr:.2f} ({shown_ci}; "
              f"threshold {SIMILAR_CORR}; chance {base:.2f}) → {word}")
    short = {"shown": "similar", "not shown": "not similar", "cannot tell": "similarity: interval spans"}[status]
    return Claim(key, paper, status, (name,), detail, f"{name} {short} across classes (r {corr:.2f})")


# ---------------------------------------------------------------------------------------------- entry point


def paper_verdict(stats_or_indices: GateStats | pd.DataFrame, model: str | None = None,
                  chance: pd.DataFrame | None = None) -> Verdict:
    """Judge the paper's four claims on one model's per-block indices (or on its :class:`GateStats`), with
    ``chance`` (one row per block: :func:`senet_viz.analysis.chance.chance_table` or ``exact_chance``) giving
    chance levels and intervals; without it, the claims that need them are "cannot tell"."""
    idx = stats_or_indices.indices() if isinstance(stats_or_indices, GateStats) else stats_or_indices
    if "model" in idx and idx["model"].nunique() > 1:
        if model is None:
            raise ValueError(f"indices of several models {sorted(idx['model'].unique())}: pass model=...")
        idx = idx[idx["model"] == model]
    if idx.empty:
        raise ValueError("no block statistics to judge")
    idx = idx.sort_values("order").reset_index(drop=True)
    name = model or str(idx["model"].iloc[0])
    inert = [b for b in (inert_of_row(r) for _, r in idx.iterrows()) if b is not None]
    inert_names = {b.block: b for b in inert}
    active = idx[~idx["block"].isin(inert_names)]
    roles = choose_roles(idx, set(inert_names))

    min_count = int(idx["min_class_count"].min()) if "min_class_count" in idx else 0
    max_count = int(idx["max_class_count"].max()) if "max_class_count" in idx else 0
    one_each = max_count == 1
    notes = []
    if one_each:
        notes.append("Every class has one image: eta² cannot be computed, and neither can Fig. 7's ±1 std bands "
                     "or percentiles within a class; a class mean is one image, so class differences cannot be told "
                     "from image-to-image noise: claims 1, 2 and 4 cannot be told.")
    elif min_count == 1:
        notes.append("Some classes have a single image: their Fig. 7 ±1 std band and within-class percentiles "
                     "cannot be computed, and they add nothing to eta²'s within-class variance.")
    if chance is None:
        notes.append("No chance table: chance levels and intervals are unknown, so claims 1 and 4 cannot be told.")

    early_order = int(roles.early["order"]) if roles.early is not None else None
    before = [b.block for b in inert
              if early_order is None or int(idx.loc[idx["block"] == b.block, "order"].iloc[0]) < early_order]
    skipped = f"; earlier constant blocks: {', '.join(before)}" if before else ""
    claims = [_early(roles.early, roles.early_text, active, chance, skipped), _rising(active, chance),
              _saturation(roles.saturation, roles.saturation_text, inert_names, chance),
              _last_similar(roles.last, roles.last_text, inert_names, chance)]
    threshold = float(idx["threshold"].iloc[0]) if "threshold" in idx else DEFAULT_THRESHOLD
    return Verdict(model=name, claims=claims, inert=inert, one_image_per_class=one_each,
                   single_image_classes=min_count == 1, notes=notes, threshold=threshold, chance=chance is not None)
