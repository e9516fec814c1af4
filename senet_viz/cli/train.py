"""``train``: train the embedded SE-ResNet on Fashion-MNIST (:mod:`senet_viz.models.embedded.train`), or only write
its sample folder, or only compare post-hoc stage-5 removal with the retrained twin; with ``--dataset
tiny-imagenet-100`` the same for ``se_resnet50_tiny100`` (:mod:`senet_viz.models.tiny100.cli`).

Its options' defaults come from the embedded package (which imports torch), so they are read when this command's
parser is built, not at start-up.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from senet_viz.cli.common import UserError, print_json
from senet_viz.paths import ASSETS_DIR


def add_train(p: argparse.ArgumentParser) -> None:
    from senet_viz.models.embedded.data import SAMPLES_DIR
    from senet_viz.models.embedded.model import ALL_SE_STAGES, MODEL_NAME
    from senet_viz.models.embedded.train import Recipe

    p.set_defaults(func=cmd_train)
    d = Recipe()
    p.add_argument("--out", type=Path, default=ASSETS_DIR / f"{MODEL_NAME}.safetensors",
                   help="weights file (.safetensors); the metrics .json and the model card .md go beside it")
    p.add_argument("--no-se-stage", type=int, action="append", default=[], choices=ALL_SE_STAGES,
                   help="train without SE in this paper stage (repeatable), e.g. 5 for se_resnet_fmnist_nose5")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="OneCycle peak learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads; 1 is fastest on a busy shared machine, results depend on it")
    p.add_argument("--data", type=Path, help="folder with the four Fashion-MNIST IDX files (default: Debian's)")
    p.add_argument("--no-download", action="store_true", help="never download the dataset")
    p.add_argument("--samples", type=Path, default=SAMPLES_DIR, help="embedded sample folder (written if missing)")
    p.add_argument("--write-samples", action="store_true", help="only (re)write the sample folder, then exit")
    p.add_argument("--compare", action="store_true",
                   help="only measure post-hoc stage-5 removal vs the retrained nose5 model (both in assets/)")
    p.add_argument("--dataset", choices=("fashion-mnist", "tiny-imagenet-100"), default="fashion-mnist",
                   help="tiny-imagenet-100: train se_resnet50_tiny100 on ../shared/data/tiny-imagenet-100 "
                        "(senet_viz.models.tiny100; --out defaults to assets/se_resnet50_tiny100.safetensors, "
                        "--compare builds its Table 13, --write-samples its held-out sample folder)")
    p.add_argument("--resume", action="store_true", help="tiny-imagenet-100: continue from <out>.ckpt.pt")
    p.add_argument("--only-se-stage", type=int, choices=ALL_SE_STAGES,
                   help="tiny-imagenet-100: SE in this stage only (the paper's Table 13 variants)")
    p.add_argument("--max-per-class", type=int, help="tiny-imagenet-100: use only this many images per class")
    p.add_argument("--max-steps", type=int, help="tiny-imagenet-100: stop each epoch after this many steps")
    p.add_argument("--held-out-per-class", type=int, default=50,
                   help="tiny-imagenet-100: images per class held out as the test set (never trained on)")


def cmd_train(args: argparse.Namespace) -> None:
    try:
        out = run_train(args)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    if args.json:
        print_json(out)


def run_train(args: argparse.Namespace) -> dict:
    if getattr(args, "dataset", "fashion-mnist") == "tiny-imagenet-100":
        from senet_viz.models.tiny100.cli import run_tiny100

        return run_tiny100(args)
    if args.write_samples:
        from senet_viz.models.embedded.data import write_samples

        path = write_samples(args.samples, root=args.data)
        return {"samples": str(path)}
    if args.compare:
        from senet_viz.models.embedded.comparison import compare

        return compare(ASSETS_DIR, threads=args.threads)
    from senet_viz.models.embedded.model import ALL_SE_STAGES
    from senet_viz.models.embedded.train import Recipe, train

    if args.epochs < 1 or args.batch_size < 1 or args.threads < 1:
        raise ValueError("--epochs, --batch-size and --threads must be positive")
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    stages = tuple(s for s in ALL_SE_STAGES if s not in set(args.no_se_stage))
    command = "python -m senet_viz " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["train"] else None
    if command is None:
        extra = "".join(f" --no-se-stage {s}" for s in args.no_se_stage)
        command = (f"python -m senet_viz train --out {args.out}{extra} --epochs {args.epochs} --seed {args.seed} "
                   f"--threads {args.threads}")
    progress = not args.json or sys.stderr.isatty()
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    return train(args.out, se_stages=stages, recipe=recipe, seed=args.seed, threads=args.threads,
                 data_root=args.data, download=not args.no_download, samples=args.samples, command=command,
                 progress=progress, log=log)
