"""``python -m senet_viz train --dataset tiny-imagenet-100``: the options of :mod:`senet_viz.cli.train` applied to
``se_resnet50_tiny100`` (training, ``--write-samples``, ``--compare`` = the Table 13 in miniature)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from senet_viz.paths import ASSETS_DIR


def run_tiny100(args: argparse.Namespace) -> dict:
    from senet_viz.models.embedded.data import SAMPLES_DIR as FMNIST_SAMPLES
    from senet_viz.models.embedded.model import MODEL_NAME as FMNIST_NAME
    from senet_viz.models.tiny100.data import SAMPLES_DIR, write_samples
    from senet_viz.models.tiny100.model import ALL_SE_STAGES, model_name_for

    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    if args.write_samples:
        samples = SAMPLES_DIR if Path(args.samples) == FMNIST_SAMPLES else Path(args.samples)
        return {"samples": str(write_samples(samples))}
    if args.compare:
        from senet_viz.models.tiny100.table13 import compare

        return compare(ASSETS_DIR, threads=args.threads, log=log)
    from senet_viz.models.tiny100.train import Recipe, train

    if args.epochs < 1 or args.batch_size < 1 or args.threads < 1:
        raise ValueError("--epochs, --batch-size and --threads must be positive")
    if args.only_se_stage is not None and args.no_se_stage:
        raise ValueError("--only-se-stage and --no-se-stage exclude each other")
    stages = ((args.only_se_stage,) if args.only_se_stage is not None
              else tuple(s for s in ALL_SE_STAGES if s not in set(args.no_se_stage)))
    out = args.out
    if out == ASSETS_DIR / f"{FMNIST_NAME}.safetensors":  # the parser's default belongs to the Fashion-MNIST model
        out = ASSETS_DIR / f"{model_name_for(stages)}.safetensors"
    command = "python -m senet_viz " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["train"] else None
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    return train(out, se_stages=stages, recipe=recipe, seed=args.seed, threads=args.threads,
                 zip_path=args.data / "train.zip" if args.data else _zip(),
                 max_per_class=args.max_per_class, held_out_per_class=args.held_out_per_class,
                 max_steps=args.max_steps, resume=args.resume, command=command,
                 samples=None if Path(args.samples) == FMNIST_SAMPLES else args.samples, log=log)


def _zip() -> Path:
    from senet_viz.models.tiny100.data import ZIP_PATH

    return ZIP_PATH
