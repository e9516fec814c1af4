"""``slim``: export the network without chosen SE blocks (:mod:`senet_viz.analysis.slim`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from senet_viz.cli.common import IMAGES_HELP, UserError, image_set, load_network, pick_blocks, print_json, progress


def add_slim(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_slim)
    p.add_argument("--remove", required=True, help="SE blocks to take out: SE_5_1,SE_5_2 | stage:5 | last:3")
    p.add_argument("--mode", choices=("identity", "mean"), default="identity",
                   help="identity: the SE modules are removed (gate = 1); mean: each gate is frozen to its mean over "
                        "the calibration split of --images (as `evaluate --mode mean` fits it) and folded into the "
                        "neighbouring batch norm or 1x1 conv where exact, else kept as a fixed per-channel scale")
    p.add_argument("--images", help=f"calibration images for --mode mean ({IMAGES_HELP})")
    p.add_argument("--format", default="safetensors",
                   help="comma-separated: safetensors (always written, with its JSON), torchscript, onnx")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--batch-size", type=int, default=32)


def cmd_slim(args: argparse.Namespace) -> None:
    from senet_viz.analysis.cost import model_cost
    from senet_viz.analysis.slim import FORMATS, fit_means, save_slim, slim_network

    formats = [f.strip().lower() for f in args.format.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise UserError(f"unknown --format {unknown[0]!r}; use {', '.join(FORMATS)}")
    if args.mode == "mean" and not args.images:
        raise UserError("--mode mean fits the gates on calibration images: give --images DIR")
    loaded = load_network(args)
    blocks = pick_blocks(loaded, args.remove)
    if not blocks:
        raise UserError(f"--remove {args.remove!r} selects no SE block")
    means, n_calibration = None, 0
    if args.mode == "mean":
        images = image_set(args, loaded)
        try:
            means, n_calibration = fit_means(loaded, images, blocks, batch_size=args.batch_size,
                                             progress=progress("calibration", args.json))
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    try:
        slim = slim_network(loaded, blocks, args.mode, means, n_calibration=n_calibration)
        paths = save_slim(slim, loaded, args.out, formats)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    except OSError as exc:
        raise UserError(f"cannot write to {args.out}: {exc}") from exc
    cost = model_cost(loaded.model, loaded.blocks, blocks, loaded.input_size, loaded.name)
    summary = {"model": loaded.name, "weights": loaded.weights_source, "mode": args.mode,
               "removed": slim.removed, "calibration_images": n_calibration, "params_before": slim.params_full,
               "params_after": slim.params, "cost_table_params_after": cost.params_after,
               "check_max_abs_logit_diff": slim.check_max_abs, "files": {k: str(v) for k, v in paths.items()}}
    if args.json:
        print_json(summary)
        return
    print(f"{loaded.name} ({loaded.weights_source}): {len(slim.removed)} SE block(s) taken out, mode {args.mode}"
          + (f", mean gates fitted on {n_calibration} calibration images" if n_calibration else ""))
    for r in slim.removed:
        print(f"  {r['block']:<10} {r['path']:<40} {r['how']}")
    saved = slim.params_full - slim.params
    print(f"parameters: {slim.params_full:,} before, {slim.params:,} after (-{saved:,}, "
          f"{saved / slim.params_full:.2%}); cost table after: {cost.params_after:,}")
    print(f"check: max |slim - hook-ablated| logit difference on a probe batch {slim.check_max_abs:.3g}")
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    print(f"load it back: python -m senet_viz evaluate --model {loaded.name} --weights {paths['safetensors']} "
          "--images DIR")
