"""What the Remove page says about a sweep while it runs and once it ran: its progress in counts
(:class:`SweepPlan`), and how its ablations were computed (:func:`replay_summary`). Plain Python, no Streamlit."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from senet_viz.analysis.ablation import split_calibration, sweep_configs
from senet_viz.data.sources import ImageSet
from senet_viz.gates.kinds import SEBlock


@dataclass(frozen=True)
class SweepPlan:
    """A sweep's size: ``configurations`` (configuration, mode) pairs over ``images`` evaluated images, after
    ``calibration`` images that fit the mean gates (mode mean only).

    The sweep reports image forwards (:func:`senet_viz.analysis.ablation.sweep_results`): each calibration image
    once, then each evaluated image once for the full network and once per configuration, batch by batch with all
    configurations at once; :meth:`text` turns that count back into images."""

    configurations: int
    calibration: int = 0

    @classmethod
    def of(cls, blocks: Sequence[SEBlock], images: ImageSet, modes: Sequence[str], kinds: Sequence[str]
           ) -> SweepPlan:
        configs = [c for c in sweep_configs(blocks) if c[0] in kinds]
        calibration = len(split_calibration(images)[0].items) if "mean" in modes else 0
        return cls(len(configs) * len(modes), calibration)

    def text(self, done: int, total: int) -> str:
        """``done`` of ``total`` image forwards as the bar says it: "40 configurations · 450 of 900 images"
        (or, first, "fitting the mean gates: 60 of 180 calibration images")."""
        n = self.configurations
        what = f"{n} configuration{'s' if n != 1 else ''}"
        if total <= 0:
            return f"Sweeping {what}: starting ..."
        if done < self.calibration:
            return f"Sweeping {what}: fitting the mean gates · {done:,} of {self.calibration:,} calibration images"
        per_image = 1 + n
        images = max(0, total - self.calibration) // per_image
        finished = min(images, (done - self.calibration) // per_image)
        return f"Sweeping {what} · {finished:,} of {images:,} images"


def replay_summary(notes: Sequence[str]) -> str:
    """One sentence on how a sweep's (or an ablation's) passes were computed, from their ``replay`` notes
    (:attr:`senet_viz.analysis.ablation.AblationResult.replay`): tails replayed from a cut, or full passes and why."""
    notes = [n for n in notes if n]
    if not notes:
        return ""
    tails = [n for n in notes if not n.startswith("full pass")]
    full = Counter(n.removeprefix("full pass: ") for n in notes if n.startswith("full pass"))
    parts = []
    if tails:
        parts.append(f"{len(tails)} of {len(notes)} replayed only the network's tail from the latest cut before "
                     "their first removed gate")
    for why, count in full.most_common(3):
        parts.append(f"{count} ran the whole network ({why})")
    return "; ".join(parts) + "."
