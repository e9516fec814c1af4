"""``extract``, ``evaluate`` and ``sweep``: the commands that run a network over a folder of images, in one process
or as the ranks of a torchrun / srun launch."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from senet_viz.cli.common import (
    UserError,
    add_batch_size,
    agreed,
    image_set,
    load_network,
    pick_blocks,
    print_json,
    progress,
    ranks,
)

if TYPE_CHECKING:  # the CLI imports torch only when a command runs
    from senet_viz.data.sources import ImageSet
    from senet_viz.models.loaded import LoadedModel


def add_extract(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_extract)
    add_batch_size(p, 32)
    p.add_argument("--out", required=True, type=Path, help="output .parquet file")
    p.add_argument("--blocks", help="only these SE blocks (same syntax as --ablate); default all")
    p.add_argument("--chunk", type=int, default=1024,
                   help="images per row group (bounds memory); under torchrun the unit of work per rank")
    p.add_argument("--workers", type=int, default=None,
                   help="decode threads beside the network (default: one per core, up to 4 on the CPU, 8 on CUDA; "
                        "0 decodes on the main thread)")


def add_evaluate(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_evaluate)
    add_batch_size(p, 32)
    p.add_argument("--ablate", help="SE blocks: SE_5_1,SE_5_2 | stage:5 | last:3")
    add_tail_replay(p)


def add_tail_replay(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-tail-replay", action="store_true",
                   help="run every ablated pass through the whole network (default: only the tail after the "
                        "first ablated gate; the same as SENET_VIZ_TAIL_REPLAY=0)")


def apply_tail_replay(args: argparse.Namespace) -> None:
    """--no-tail-replay switches replay off for this process (every rank of a torchrun gets the same flag)."""
    if getattr(args, "no_tail_replay", False):
        from senet_viz.inference.tail import REPLAY_ENV

        os.environ[REPLAY_ENV] = "0"


def add_sweep(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_sweep)
    p.add_argument("--modes", default="identity,mean", help="identity, mean or both (comma-separated)")
    p.add_argument("--kinds", help="restrict to block, stage and/or last (comma-separated)")
    add_batch_size(p, 64)
    add_tail_replay(p)
    p.add_argument("--out", required=True, type=Path, help="output .csv")
    p.add_argument("--figure", type=Path, help="also write the Pareto figure (.html/.png)")


def cmd_extract(args: argparse.Namespace) -> None:
    from senet_viz.data.store import ExcitationWriter
    from senet_viz.inference.run import RunOptions, run_model

    with ranks(args) as group:
        def setup():
            loaded = load_network(args)
            images = image_set(args, loaded)
            blocks = pick_blocks(loaded, args.blocks) if args.blocks else loaded.blocks
            if args.chunk < 1:
                raise UserError(f"--chunk must be at least 1, got {args.chunk}")
            return loaded, images, blocks

        def open_writer():  # rank 0 only, once every rank is ready (no half-written file after a failed setup)
            if not group.main:
                return None
            meta = {"model": loaded.name, "weights": loaded.weights_source, "weights_id": loaded.weights_id,
                    "class_names": images.class_names, "model_class_names": list(loaded.class_names),
                    "shard": args.shard}
            try:
                return ExcitationWriter(args.out, blocks, meta)
            except OSError as exc:
                raise UserError(f"cannot write {args.out}: {exc}") from exc

        loaded, images, blocks = agreed(group, setup)
        writer = agreed(group, open_writer)
        report = progress("extract", args.json or not group.main)
        n_done, skipped = 0, list(images.skipped)
        total = len(images.items)
        # Chunks bound memory: gates of one chunk live in RAM, then go to their own row group. With several ranks,
        # chunk c is run by rank c % world and rank 0 writes the chunks in order, so the file has the rows and row
        # groups of a single-process run.
        starts = list(range(0, total, args.chunk))
        with contextlib.ExitStack() as stack:
            if writer is not None:
                stack.enter_context(writer)
            for first in range(0, len(starts), group.world):
                mine = first + group.rank
                result = None
                if mine < len(starts):
                    chunk = type(images)(images.items[starts[mine]:starts[mine] + args.chunk], [],
                                         images.class_names)
                    result = run_model(loaded, chunk, blocks, RunOptions(
                        batch_size=args.batch_size, keep_logits=False, num_workers=args.workers,
                        precision=args.precision))
                if not group.main:
                    if result is not None:
                        group.send_result(result)
                    continue
                for src in range(min(group.world, len(starts) - first)):
                    part = result if src == 0 else group.recv_result(src)
                    writer.write(part)
                    skipped += part.skipped
                    n_done += min(args.chunk, total - starts[first + src])
                    if report:
                        report(n_done, total)
            rows = writer.rows if writer is not None else 0
    if not group.main:
        return
    summary = {"out": str(args.out), "model": loaded.name, "blocks": [b.name for b in blocks], "n_images": rows,
               "n_skipped": len(skipped), "skipped": [{"file": s.file, "reason": s.reason} for s in skipped],
               "bytes": Path(args.out).stat().st_size}
    if args.json:
        print_json(summary)
    else:
        print(f"wrote {rows} images x {len(blocks)} SE blocks to {args.out} ({summary['bytes'] / 1e6:.1f} MB); "
              f"{len(skipped)} skipped")
        for s in skipped:
            print(f"  skipped {s.file}: {s.reason}")


def scoring_images(images: ImageSet, loaded: LoadedModel) -> tuple[ImageSet, list[str]]:
    """``images`` labelled in the model's class space for top-1 / top-5, as the app scores them
    (:func:`senet_viz.data.sources.model_space_labels`), and the folder classes that name no model class (their
    images count for agreement and KL only), sorted."""
    from senet_viz.data.sources import model_space_labels

    scored = model_space_labels(images, loaded.class_names, loaded.wnids)
    unscored = sorted({it.label_name for it, s in zip(images.items, scored.items, strict=True)
                       if it.label_name and s.label is None})
    return scored, unscored


def cmd_evaluate(args: argparse.Namespace) -> None:
    from senet_viz.inference.distributed import evaluate_sharded

    apply_tail_replay(args)
    with ranks(args) as group:
        def setup():
            loaded = load_network(args)
            images, unscored = scoring_images(image_set(args, loaded), loaded)
            blocks = pick_blocks(loaded, args.ablate)
            if args.ablate and not blocks:
                raise UserError(f"--ablate {args.ablate!r} selects no SE block")
            return loaded, images, blocks, unscored

        loaded, images, blocks, unscored = agreed(group, setup)
        try:
            out = evaluate_sharded(group, loaded, images, blocks, mode=args.mode,
                                   calibrate_on_eval=args.calibrate_on_eval, batch_size=args.batch_size,
                                   progress=progress("evaluate", args.json or not group.main),
                                   precision=args.precision)
        except ValueError as exc:  # e.g. no calibration image could be read
            raise UserError(str(exc)) from exc
    if out is None:  # not rank 0
        return
    if args.json:
        print_json({**out.to_dict(), "unscored_classes": unscored})
        return
    pct = lambda v: "n/a" if v is None else f"{v:.2%}"  # noqa: E731
    print(f"{loaded.name} ({loaded.weights_source}) on {out.n_images} images, {out.n_skipped} skipped; "
          f"outputs read as {loaded.outputs}")
    if unscored:
        print(f"not scored for top-1/top-5 ({out.n_scored} of {out.n_images} scored): the folder classes "
              f"{', '.join(unscored)} are not classes of the model (they count for agreement and KL)")
    print(f"full network: top-1 {pct(out.full_top1)}, top-5 {pct(out.full_top5)}, {out.params:,} parameters")
    if blocks:
        kl = "n/a" if out.kl is None else f"{out.kl:.4f} nats"
        print(f"{args.mode} on {', '.join(out.ablated)}: top-1 {pct(out.top1)}, top-5 {pct(out.top5)}, "
              f"agreement {pct(out.agreement)}, KL {kl}, -{out.params_removed:,} parameters")
        print(f"ablated pass: {out.replay}")
    for s in out.skipped:
        print(f"  skipped {s.file}: {s.reason}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from senet_viz.analysis.ablation import MODES, pareto_front, sweep_configs
    from senet_viz.inference.distributed import sweep_sharded

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    apply_tail_replay(args)
    with ranks(args) as group:
        def setup():
            unknown = [m for m in modes if m not in MODES]
            if unknown or not modes:
                raise UserError(f"unknown ablation mode {unknown[0] if unknown else args.modes!r}; "
                                "use identity and/or mean")
            loaded = load_network(args)
            images, _ = scoring_images(image_set(args, loaded), loaded)
            configs = sweep_configs(loaded.blocks)
            if args.kinds:
                kinds = {k.strip() for k in args.kinds.split(",")}
                configs = [c for c in configs if c[0] in kinds]
                if not configs:
                    raise UserError(f"--kinds {args.kinds!r} selects no configuration; use block, stage and/or last")
            return loaded, images, configs

        loaded, images, configs = agreed(group, setup)
        try:
            frame = sweep_sharded(group, loaded, images, modes, configs, batch_size=args.batch_size,
                                  progress=progress("sweep", args.json or not group.main), precision=args.precision)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    if frame is None:  # not rank 0
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    if args.figure:
        from senet_viz.plots.ablation import sweep_figure
        from senet_viz.plots.export import save_figure

        save_figure(sweep_figure(frame), args.figure)
    if args.json:
        print_json({"out": str(args.out), "rows": frame.to_dict(orient="records")})
        return
    cols = ["config", "mode", "top1", "d_top1", "agreement", "kl", "params_removed", "params_saved_pct"]
    full = frame["full_top1"].iloc[0]
    full_text = "n/a (no labelled image)" if full is None or full != full else f"{full:.2%}"
    print(f"{loaded.name}: {int(frame['n_images'].iloc[0])} evaluation images, "
          f"{int(frame['n_calibration'].iloc[0])} calibration images; full top-1 {full_text}")
    print(frame[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("Pareto front (params saved vs top-1 change):")
    print(pareto_front(frame)[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if "replay" in frame:
        print("how the configurations were computed (the 'replay' column):")
        for note, rows in frame[frame["replay"] != ""].groupby("replay", sort=False):
            print(f"  {len(rows)} row(s): {note}")
    print(f"wrote {args.out}")
