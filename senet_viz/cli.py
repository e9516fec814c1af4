"""Command line: ``python -m senet_viz <command>``; every command takes --help, --device and --json.

Exit codes: 0 success; 2 a usage or input error (unknown model or block, unreadable weights, no usable image),
with the reason on stderr; 1 an unexpected failure. Images that cannot be read do not fail a run: they are
counted in ``n_skipped`` and listed under ``skipped`` with their reason.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .blocks import BlockSelectionError, select_blocks
from .data import folder_source
from .weights import WeightsError


class UserError(Exception):
    """An error in what the user asked for: printed without a traceback, exit code 2."""


def _print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _progress(label: str, quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None
    start = time.time()

    def report(done: int, total: int) -> None:
        sys.stderr.write(f"\r{label}: {done}/{total} images, {time.time() - start:.0f} s")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return report


def _load(args, weights_needed: bool = True):
    from .zoo import load_model

    weights = getattr(args, "weights", None)
    if not weights_needed and weights is None:
        weights = "random"
    try:
        return load_model(args.model, weights=weights, device=args.device,
                          reduction=getattr(args, "reduction", None))
    except KeyError as exc:
        raise UserError(exc.args[0]) from exc
    except (WeightsError, ValueError) as exc:
        raise UserError(str(exc)) from exc


def _images(args, loaded):
    try:
        images = folder_source(args.images, class_names=loaded.class_names, wnids=loaded.wnids)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    if getattr(args, "shard", None):
        try:
            i, n = (int(x) for x in args.shard.split("/"))
            images = images.shard(i, n)
        except ValueError as exc:
            raise UserError(f"--shard must be i/n with 0 <= i < n, e.g. 0/4; got {args.shard!r}") from exc
    if getattr(args, "limit", None):
        images.items = images.items[: args.limit]
    if not images.items:
        raise UserError(f"no images found in {args.images}")
    return images


def _select(loaded, spec: str | None):
    try:
        return select_blocks(loaded.blocks, spec)
    except BlockSelectionError as exc:
        raise UserError(str(exc)) from exc


def cmd_models(args) -> None:
    from .zoo import REGISTRY, weights_status

    rows = [{"name": s.name, "source": s.source, "family": s.family, "paper_name": s.paper_name,
             "weights": weights_status(s.name)} for s in REGISTRY.values()]
    if args.blocks:
        from .blocks import find_se_blocks

        for row in rows:
            spec = REGISTRY[row["name"]]
            row["se_blocks"] = len(find_se_blocks(spec.build(), spec.input_size))
    if args.json:
        _print_json(rows)
        return
    for r in rows:
        extra = f"  {r['se_blocks']:3d} SE" if "se_blocks" in r else ""
        print(f"{r['name']:28s} {r['family']:12s} {r['weights']:18s}{extra}  {r['paper_name']}")


def cmd_blocks(args) -> None:
    loaded = _load(args, weights_needed=False)
    rows = [{"name": b.name, "path": b.path, "gate": b.gate_path, "stage": b.stage, "index": b.index,
             "channels": b.channels, "params": b.params, "gate_fn": b.gate_fn} for b in loaded.blocks]
    if args.json:
        _print_json(rows)
        return
    print(f"{loaded.name}: {len(rows)} SE blocks")
    for r in rows:
        print(f"{r['name']:8s} stage {r['stage']}  C={r['channels']:5d}  params={r['params']:9,d}  {r['path']}")


def cmd_cost(args) -> None:
    from .cost import model_cost

    loaded = _load(args, weights_needed=False)
    removed = _select(loaded, args.ablate)
    report = model_cost(loaded.model, loaded.blocks, removed, loaded.input_size, loaded.name)
    out = report.to_dict() if args.per_block else report.summary()
    out["reduction"] = args.reduction or "default"
    if args.json:
        _print_json(out)
        return
    print(f"{loaded.name} at {loaded.input_size[-1]}px: {report.params:,} parameters, {report.macs / 1e9:.3f} GMACs")
    print(f"SE blocks: {report.se_params:,} parameters ({report.se_params / report.params:.1%}), "
          f"{report.se_macs / 1e9:.4f} GMACs")
    if removed:
        print(f"without {', '.join(report.removed)}: {report.params_after:,} parameters "
              f"(-{report.params_removed:,}, -{report.params_removed / report.params:.2%}), "
              f"{report.macs_after / 1e9:.3f} GMACs")
    print(report.stages().to_string(index=False))


def cmd_extract(args) -> None:
    from .run import run_model
    from .store import ExcitationWriter

    loaded = _load(args)
    images = _images(args, loaded)
    blocks = _select(loaded, args.blocks) if args.blocks else loaded.blocks
    meta = {"model": loaded.name, "weights": loaded.weights_source, "weights_id": loaded.weights_id,
            "class_names": images.class_names, "shard": args.shard}
    progress = _progress("extract", args.json)
    n_done, skipped = 0, list(images.skipped)
    total = len(images.items)
    with ExcitationWriter(args.out, blocks, meta) as writer:
        # Chunks bound memory: gates of one chunk live in RAM, then go to their own row group.
        for start in range(0, total, args.chunk):
            chunk = type(images)(images.items[start:start + args.chunk], [], images.class_names)
            result = run_model(loaded, chunk, blocks=blocks, batch_size=args.batch_size, keep_logits=False,
                               num_workers=args.workers)
            writer.write(result)
            skipped += result.skipped
            n_done += len(chunk.items)
            if progress:
                progress(n_done, total)
        rows = writer.rows
    summary = {"out": str(args.out), "model": loaded.name, "blocks": [b.name for b in blocks], "n_images": rows,
               "n_skipped": len(skipped), "skipped": [{"file": s.file, "reason": s.reason} for s in skipped],
               "bytes": Path(args.out).stat().st_size}
    if args.json:
        _print_json(summary)
    else:
        print(f"wrote {rows} images x {len(blocks)} SE blocks to {args.out} ({summary['bytes'] / 1e6:.1f} MB); "
              f"{len(skipped)} skipped")
        for s in skipped:
            print(f"  skipped {s.file}: {s.reason}")


def cmd_evaluate(args) -> None:
    from .ablation import evaluate

    loaded = _load(args)
    images = _images(args, loaded)
    blocks = _select(loaded, args.ablate)
    if args.ablate and not blocks:
        raise UserError(f"--ablate {args.ablate!r} selects no SE block")
    out = evaluate(loaded, images, blocks, mode=args.mode, calibrate_on_eval=args.calibrate_on_eval,
                   batch_size=args.batch_size, progress=_progress("evaluate", args.json))
    if args.json:
        _print_json(out)
        return
    pct = lambda v: "n/a" if v is None else f"{v:.2%}"  # noqa: E731
    print(f"{loaded.name} ({loaded.weights_source}) on {out['n_images']} images, {out['n_skipped']} skipped")
    print(f"full network: top-1 {pct(out['full_top1'])}, top-5 {pct(out['full_top5'])}, "
          f"{out['params']:,} parameters")
    if blocks:
        print(f"{args.mode} on {', '.join(out['ablated'])}: top-1 {pct(out['top1'])}, top-5 {pct(out['top5'])}, "
              f"agreement {pct(out['agreement'])}, KL {out['kl']:.4f} nats, "
              f"-{out['params_removed']:,} parameters")
    for s in out["skipped"]:
        print(f"  skipped {s['file']}: {s['reason']}")


def cmd_stats(args) -> None:
    from .stats import stats_from_parquet

    total = None
    for path in args.excitations:  # one shard at a time: memory stays O(classes x channels x bins)
        try:
            part = stats_from_parquet(path, bins=args.bins)
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"cannot read excitations {path}: {exc}") from exc
        total = part if total is None else total.merge(part)
    assert total is not None  # argparse requires at least one file
    if args.out:
        total.save(args.out)
    indices = total.indices(threshold=args.threshold)
    if args.json:
        _print_json(indices.to_dict(orient="records"))
        return
    with_classes = indices["n_classes"].max() if len(indices) else 0
    print(f"{total.model}: {int(indices['n_images'].max()) if len(indices) else 0} images, {with_classes} classes")
    cols = ["block", "stage", "channels", "specificity", "specificity_method", "saturation", "mean_gate",
            "mean_abs_1_minus_s", "share_near_0", "cross_class_corr"]
    print(indices[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        print(f"wrote {args.out}")


FIGURES = ("fig6", "fig7", "distributions", "depth", "heatmap")


def cmd_figure(args) -> None:
    from . import plots
    from .stats import GateStats

    try:
        stats = GateStats.load(args.stats)
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"cannot read statistics {args.stats}: {exc}") from exc
    channels = stats.frame()
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    blocks = [b.strip() for b in args.blocks.split(",")] if args.blocks else None
    try:
        if args.kind == "fig6":
            fig = plots.fig6(channels, blocks=blocks, classes=classes, n_channels=args.channels,
                             seed=args.seed, all_channels=args.all_channels)
        elif args.kind == "fig7":
            cls = classes[0] if classes else next(c for c in channels["class"].unique() if c != "all")
            block = blocks[0] if blocks else stats.blocks[-1].name
            fig = plots.fig7(channels, block, cls, n_channels=args.channels, seed=args.seed,
                             all_channels=args.all_channels)
        elif args.kind == "distributions":
            fig = plots.distributions(channels, stage=args.stage, blocks=blocks, classes=classes)
        elif args.kind == "depth":
            second = GateStats.load(args.second).indices() if args.second else None
            fig = plots.depth_profile(stats.indices(), second=second)
        else:
            fig = plots.heatmap(channels, blocks[0] if blocks else stats.blocks[-1].name, classes=classes)
        plots.save_figure(fig, args.out)
    except (ValueError, StopIteration) as exc:
        raise UserError(str(exc) or "no class to show") from exc
    except RuntimeError as exc:  # e.g. PNG export without a browser for kaleido
        raise UserError(str(exc)) from exc
    if args.json:
        _print_json({"out": str(args.out), "kind": args.kind, "title": fig.layout.title.text})
    else:
        print(f"wrote {args.out}")


def cmd_paper(args) -> None:
    from . import plots
    from .paper import paper_preset

    loaded = _load(args)
    images = _images(args, loaded)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    try:
        result = paper_preset(loaded, images, classes=classes, per_class=args.per_class,
                              batch_size=args.batch_size, progress=_progress("paper preset", args.json))
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    args.out.mkdir(parents=True, exist_ok=True)
    channels = result.stats.frame()
    written = {"stats": str(args.out / "stats.parquet")}
    result.stats.save(args.out / "stats.parquet")
    fig = plots.fig6(channels, classes=result.classes, n_channels=args.channels, seed=args.seed)
    plots.save_figure(fig, args.out / "fig6.html")
    written["fig6"] = str(args.out / "fig6.html")
    for cls in result.classes:
        fig = plots.fig7(channels, result.stats.blocks[-1].name, cls, n_channels=args.channels, seed=args.seed)
        path = args.out / f"fig7_{''.join(ch if ch.isalnum() else '_' for ch in cls)}.html"
        plots.save_figure(fig, path)
        written[f"fig7 {cls}"] = str(path)
    indices = result.stats.indices()
    out = {"model": loaded.name, "classes": result.images_per_class, "n_images": result.n_images,
           "n_skipped": len(result.skipped), "files": written,
           "indices": indices.to_dict(orient="records")}
    if args.json:
        _print_json(out)
    else:
        print(f"{loaded.name}: classes {result.images_per_class}, all-class curve over {result.n_images} images")
        for name, path in written.items():
            print(f"  {name}: {path}")


def cmd_sweep(args) -> None:
    from .ablation import pareto_front, sweep, sweep_configs

    loaded = _load(args)
    images = _images(args, loaded)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    configs = sweep_configs(loaded.blocks)
    if args.kinds:
        kinds = {k.strip() for k in args.kinds.split(",")}
        configs = [c for c in configs if c[0] in kinds]
    try:
        frame = sweep(loaded, images, modes, configs, batch_size=args.batch_size,
                      progress=_progress("sweep configurations", args.json))
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    if args.figure:
        from . import plots

        plots.save_figure(plots.sweep_figure(frame), args.figure)
    if args.json:
        _print_json({"out": str(args.out), "rows": frame.to_dict(orient="records")})
        return
    cols = ["config", "mode", "top1", "d_top1", "agreement", "kl", "params_removed", "params_saved_pct"]
    print(f"{loaded.name}: {int(frame['n_images'].iloc[0])} evaluation images, "
          f"{int(frame['n_calibration'].iloc[0])} calibration images; full top-1 {frame['full_top1'].iloc[0]:.2%}")
    print(frame[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("Pareto front (params saved vs top-1 change):")
    print(pareto_front(frame)[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {args.out}")


def cmd_train(args) -> None:
    from .fmnist import run_train_command

    try:
        out = run_train_command(args)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    if args.json:
        _print_json(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m senet_viz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, model: bool = True):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
        p.add_argument("--json", action="store_true", help="print one JSON document")
        if model:
            p.add_argument("--model", required=True, help="zoo name, see `python -m senet_viz models`")
        return p

    p = command("models", "list models, where their weights come from", model=False)
    p.add_argument("--blocks", action="store_true", help="also count SE blocks (builds every model, slower)")
    p.set_defaults(func=cmd_models)

    p = command("blocks", "list SE blocks: name, module path, stage, channels, parameters")
    p.add_argument("--weights", help="weights file (not needed to list blocks)")
    p.set_defaults(func=cmd_blocks)

    p = command("cost", "parameters and GMACs per SE block and stage; no weights needed")
    p.add_argument("--ablate", help="SE blocks to remove: SE_5_1,SE_5_2 | stage:5 | stage:3,4,5 | last:3")
    p.add_argument("--reduction", type=int, help="build with SE reduction ratio r (SE-ResNet/ResNeXt families)")
    p.add_argument("--per-block", action="store_true", help="with --json: include per-block and per-stage rows")
    p.set_defaults(func=cmd_cost)

    for name, help_text, func in (
        ("extract", "capture every SE gate over a folder of images into Parquet", cmd_extract),
        ("evaluate", "top-1/top-5 of the network, optionally with SE blocks removed or frozen", cmd_evaluate),
    ):
        p = command(name, help_text)
        p.add_argument("--weights", help="weights file: .safetensors, .pth/.pt (weights_only), .tflite")
        p.add_argument("--images", required=True,
                       help="folder: ImageNet-style names (n01443537_goldfish.JPEG) or class sub-folders")
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--shard", help="process part i of n (0-based), e.g. 0/4; the parts combine")
        p.add_argument("--limit", type=int, help="use only the first N images")
        p.set_defaults(func=func)
        if name == "extract":
            p.add_argument("--out", required=True, type=Path, help="output .parquet file")
            p.add_argument("--blocks", help="only these SE blocks (same syntax as --ablate); default all")
            p.add_argument("--chunk", type=int, default=1024, help="images per row group (bounds memory)")
            p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
        else:
            p.add_argument("--ablate", help="SE blocks: SE_5_1,SE_5_2 | stage:5 | last:3")
            p.add_argument("--mode", choices=("identity", "mean"), default="identity",
                           help="identity: gate = 1 (the paper's removal); mean: gate = its mean over a "
                                "calibration split (20%% of the images, not scored)")
            p.add_argument("--calibrate-on-eval", action="store_true",
                           help="with --mode mean: fit the mean gates on all images and score on them too")
    p = command("sweep", "ablate every SE block, stage and last-k set in each mode; accuracy vs parameters saved")
    p.add_argument("--weights", help="weights file")
    p.add_argument("--images", required=True, help="folder of labelled images")
    p.add_argument("--modes", default="identity,mean", help="identity, mean or both (comma-separated)")
    p.add_argument("--kinds", help="restrict to block, stage and/or last (comma-separated)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", required=True, type=Path, help="output .csv")
    p.add_argument("--figure", type=Path, help="also write the Pareto figure (.html/.png)")
    p.set_defaults(func=cmd_sweep, shard=None, limit=None)

    p = command("train", "train the embedded SE-ResNet on Fashion-MNIST (weights, metrics, model card)",
                model=False)
    from .fmnist import add_train_arguments

    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = command("stats", "per-class gate statistics and indices from extracted Parquet shards", model=False)
    p.add_argument("--excitations", nargs="+", required=True, type=Path, help="one or more extract outputs")
    p.add_argument("--out", type=Path, help="write the statistics (with histograms) to this .parquet")
    p.add_argument("--bins", type=int, default=50, help="histogram bins on [0, 1]")
    p.add_argument("--threshold", type=float, default=0.9, help="saturation threshold on the mean gate")
    p.set_defaults(func=cmd_stats)

    p = command("figure", "draw a figure from saved statistics (.html, or .png/.svg with Chromium)", model=False)
    p.add_argument("--stats", required=True, type=Path, help="output of `stats --out`")
    p.add_argument("--kind", required=True, choices=FIGURES)
    p.add_argument("--classes", help="comma-separated class names (default: all in the statistics)")
    p.add_argument("--blocks", help="comma-separated block names (fig6 default: the paper's preset)")
    p.add_argument("--stage", type=int, help="distributions: one stage")
    p.add_argument("--second", type=Path, help="depth: statistics of a second model for the same chart")
    p.add_argument("--channels", type=int, default=50, help="channels sampled for fig6/fig7")
    p.add_argument("--all-channels", action="store_true", help="fig6/fig7: every channel")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path, help=".html, .png, .svg or .pdf")
    p.set_defaults(func=cmd_figure)

    p = command("paper", "the paper's Fig. 6/7 protocol on a folder of labelled images, in one call")
    p.add_argument("--weights", help="weights file")
    p.add_argument("--images", required=True, help="folder of labelled images")
    p.add_argument("--classes", help="class names or wnids (default: goldfish, pug, airliner, cliff if present)")
    p.add_argument("--per-class", type=int, default=50, help="images per class (the paper used 50)")
    p.add_argument("--channels", type=int, default=50, help="channels sampled per block (the paper shows 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", required=True, type=Path, help="output folder for stats and figures")
    p.set_defaults(func=cmd_paper, shard=None, limit=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
