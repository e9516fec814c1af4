"""The paper's Table 13 in miniature for ``se_resnet50_tiny100`` (``python -m senet_viz train --dataset
tiny-imagenet-100 --compare``): the retrained variants found in ``assets/`` (no SE in stage 5; SE only in stage 2,
3 or 4) beside post-hoc removal of the trained network's stage-5 SE blocks, on the held-out set: top-1, top-5,
parameters, MACs. Written into the metrics JSON of every variant under ``table13`` and into their cards."""

from __future__ import annotations

import datetime as _dt
import json
import time
from collections.abc import Callable
from pathlib import Path

from senet_viz.models.embedded.train import cpu_threads
from senet_viz.models.tiny100.card import write_card
from senet_viz.models.tiny100.data import SAMPLES_DIR, held_out_available, held_out_source
from senet_viz.models.tiny100.model import ALL_SE_STAGES, MODEL_NAME, model_name_for
from senet_viz.paths import ASSETS_DIR

#: The variants, in the paper's Table 13 order after the full network: (se_stages, label).
VARIANTS: tuple[tuple[tuple[int, ...], str], ...] = (
    ((2, 3, 4, 5), "SE in all stages, as trained"), ((2, 3, 4), "retrained without SE in stage 5"),
    ((2,), "retrained, SE only in stage 2"), ((3,), "retrained, SE only in stage 3"),
    ((4,), "retrained, SE only in stage 4"))


def load_variant(se_stages: tuple[int, ...], assets: Path = ASSETS_DIR):
    """A LoadedModel of the variant's weights in ``assets`` (the zoo's spec where registered), or None."""
    from senet_viz.models.tiny100.train import load_trained

    name = model_name_for(se_stages)
    path = assets / f"{name}.safetensors"
    return load_trained(name, path, se_stages) if path.is_file() else None


def measure(assets: Path = ASSETS_DIR, limit: int | None = None, log: Callable[[str], None] = print) -> dict:
    """The table (what :func:`compare` stores), without writing anything: on the 5,000 held-out images when the
    shared zip is there (else the shipped sample), with :func:`senet_viz.analysis.ablation.evaluate`."""
    from senet_viz.analysis.ablation import evaluate
    from senet_viz.data.folders import folder_source
    from senet_viz.gates.blocks import select_blocks

    full = load_variant(ALL_SE_STAGES, assets)
    if full is None:
        raise FileNotFoundError(f"{assets / (MODEL_NAME + '.safetensors')} not found: train it first")
    if held_out_available():
        images, source = held_out_source(limit), "held-out test set"
    else:
        images = folder_source(SAMPLES_DIR, class_names=full.class_names, wnids=full.wnids)
        source = "shipped sample"
    stage5 = select_blocks(full.blocks, "stage:5")
    runs = [(VARIANTS[0][1], ALL_SE_STAGES, full, [], "identity"),
            ("post-hoc: stage-5 SE removed (gate = 1)", (2, 3, 4), full, stage5, "identity"),
            ("post-hoc: stage-5 SE frozen to its mean gate", (2, 3, 4), full, stage5, "mean")]
    for stages, label in VARIANTS[1:]:
        loaded = load_variant(stages, assets)
        if loaded is not None:
            runs.append((f"{label} (`{model_name_for(stages)}`)", stages, loaded, [], "identity"))
    rows = []
    for label, stages, loaded, blocks, mode in runs:
        t = time.perf_counter()
        res = evaluate(loaded, images, blocks, mode=mode)
        rows.append({"label": label, "model": loaded.name, "se_stages": list(stages), "mode": mode if blocks else None,
                     "top1": res.top1, "top5": res.top5, "full_top1": res.full_top1, "agreement": res.agreement,
                     "params": res.params_after, "macs": res.macs - res.macs_removed, "n_images": res.n_images})
        log(f"{label:60s} top-1 {res.top1:.4f} top-5 {res.top5:.4f} (full on the same images {res.full_top1:.4f}), "
            f"n = {res.n_images}, params {res.params_after:,}, {time.perf_counter() - t:.0f} s")
    mean_row = rows[2]
    note = (f"Source: the {source}. The mean-gate row is scored on the {mean_row['n_images']:,} images outside its "
            f"20% calibration split (the full network scores {100 * mean_row['full_top1']:.2f}% on those). One "
            "training run (seed 0) per retrained row: differences of a point or so are within run-to-run variation.")
    return {"date": _dt.date.today().isoformat(), "base": MODEL_NAME, "source": source, "n_images": len(images.items),
            "ablated": [b.name for b in stage5], "rows": rows, "note": note}


def compare(assets: str | Path = ASSETS_DIR, threads: int | None = 1, limit: int | None = None,
            log: Callable[[str], None] = print) -> dict:
    """:func:`measure`, stored under ``table13`` in the JSON of every variant in ``assets``; cards re-rendered."""
    assets = Path(assets)
    with cpu_threads(threads):
        table = measure(assets, limit, log)
    for stages, _ in VARIANTS:
        path = assets / f"{model_name_for(stages)}.json"
        if path.is_file():
            metrics = json.loads(path.read_text())
            metrics["table13"] = table
            path.write_text(json.dumps(metrics, indent=2) + "\n")
            write_card(path)
    return table

