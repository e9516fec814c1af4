"""Post-hoc removal of the stage-5 SE blocks vs the network retrained without them
(``python -m senet_viz train --compare``), written into the shipped metrics and cards in ``assets/``."""

from __future__ import annotations

import datetime as _dt
import json
import time
from collections.abc import Callable
from pathlib import Path

from senet_viz.models.embedded.card import write_card
from senet_viz.models.embedded.data import CLASS_NAMES, fashion_mnist_available, fashion_mnist_test_source
from senet_viz.models.embedded.model import MODEL_NAME, NOSE5_NAME
from senet_viz.models.embedded.train import cpu_threads, load_trained
from senet_viz.paths import ASSETS_DIR

_RUNS = (("se", "full", "identity"), ("posthoc_identity", "stage5", "identity"), ("posthoc_mean", "stage5", "mean"),
         ("retrained_nose5", "nose5", "identity"))


def compare(assets: str | Path = ASSETS_DIR, full_test: bool = True, threads: int | None = 1,
            log: Callable[[str], None] = print) -> dict:
    """Post-hoc removal of the stage-5 SE blocks vs the network retrained without them, in numbers.

    Evaluates on the embedded sample and (if installed and ``full_test``) the full test set, with
    :func:`senet_viz.analysis.ablation.evaluate`: ``se_resnet_fmnist`` as trained, with stage 5 removed (gate = 1,
    ``identity``) and frozen to its mean gate (``mean``: fitted on a 20% calibration split, scored on the other
    80%), and ``se_resnet_fmnist_nose5``. Stores the table under ``comparison`` in both models' JSON in
    ``assets`` and re-renders both cards. Returns the comparison. ``threads`` (torch CPU threads during the run,
    restored afterwards; None: leave as is): on a busy 2-core machine one thread is several times faster than two.
    """
    with cpu_threads(threads):
        comparison = measure(Path(assets), full_test, log)
    for name in (MODEL_NAME, NOSE5_NAME):
        path = Path(assets) / f"{name}.json"
        metrics = json.loads(path.read_text())
        metrics["comparison"] = comparison
        path.write_text(json.dumps(metrics, indent=2) + "\n")
        write_card(path)
    return comparison


def measure(assets: Path, full_test: bool = True, log: Callable[[str], None] = print) -> dict:
    """The comparison table (what :func:`compare` stores), without writing anything."""
    from senet_viz.analysis.ablation import evaluate
    from senet_viz.data.folders import folder_source
    from senet_viz.gates.blocks import select_blocks

    se = load_trained(MODEL_NAME, assets / f"{MODEL_NAME}.safetensors")
    nose5 = load_trained(NOSE5_NAME, assets / f"{NOSE5_NAME}.safetensors")
    stage5 = select_blocks(se.blocks, "stage:5")
    networks = {"full": (se, []), "stage5": (se, stage5), "nose5": (nose5, [])}
    sources = {"sample": folder_source(assets / "fmnist_samples", class_names=list(CLASS_NAMES))}
    if full_test and fashion_mnist_available():
        sources["test"] = fashion_mnist_test_source()
    keys = ("top1", "full_top1", "agreement", "kl", "params", "params_removed", "params_after", "n_images")
    rows: dict[str, dict] = {}
    for src, images in sources.items():
        for label, network, mode in _RUNS:
            loaded, blocks = networks[network]
            t = time.perf_counter()
            res = evaluate(loaded, images, blocks, mode=mode)  # the CLI's batch size: numbers match it exactly
            rows[f"{src}/{label}"] = {k: res[k] for k in keys}
            log(f"{src:6s} {label:17s} top-1 {res['top1']:.4f} (full network on the same images "
                f"{res['full_top1']:.4f}), n = {res['n_images']}, params {res['params_after']:,}, "
                f"{time.perf_counter() - t:.0f} s")
    return {"date": _dt.date.today().isoformat(), "ablated": [b.name for b in stage5], "rows": rows}
