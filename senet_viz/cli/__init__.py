"""Command line: ``python -m senet_viz <command>``; every command takes --help, --device and --json.

Exit codes: 0 success; 2 a usage or input error (unknown model or block, unreadable weights, no usable image),
with the reason on stderr; 1 an unexpected failure. Images that cannot be read do not fail a run: they are
counted in ``n_skipped`` and listed under ``skipped`` with their reason.

Size: one short function per command plus the parser they share (common options defined once, as parent
parsers); a command reads top to bottom like its --help, and the module is the CLI's one entry point.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from senet_viz.data.sources import folder_source
from senet_viz.gates.blocks import BlockSelectionError, select_blocks
from senet_viz.models.weights import WeightsError


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


def _numbers(text: str | None, flag: str, kind: type = float) -> tuple | None:
    """``--mean 0.5,0.5,0.5`` / ``--input-size 3,224,224`` (or 3x224x224) as a tuple."""
    if text is None:
        return None
    try:
        values = tuple(kind(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError as exc:
        raise UserError(f"{flag} takes comma-separated numbers, got {text!r}") from exc
    if not values:
        raise UserError(f"{flag} takes comma-separated numbers, got {text!r}")
    return values


def _file_options(args):
    """The model-file options (``--input-size``, ``--resize``, ``--classes``, ``--mean``, ``--std``,
    ``--allow-code``), or None when none was given."""
    from senet_viz.models.zoo import ModelFileOptions

    size = _numbers(getattr(args, "input_size", None), "--input-size", int)
    if size is not None and len(size) != 3:
        raise UserError(f"--input-size takes C,H,W (e.g. 3,224,224), got {args.input_size!r}")
    names = None
    classes_file = getattr(args, "class_file", None)
    if classes_file is not None:
        try:
            names = tuple(line.strip() for line in Path(classes_file).read_text().splitlines() if line.strip())
        except OSError as exc:
            raise UserError(f"cannot read the class names {classes_file}: {exc}") from exc
        if not names:
            raise UserError(f"{classes_file} lists no class name (one per line)")
    options = ModelFileOptions(input_size=size, resize=getattr(args, "resize", None), class_names=names,
                               mean=_numbers(getattr(args, "mean", None), "--mean"),
                               std=_numbers(getattr(args, "std", None), "--std"),
                               allow_code=bool(getattr(args, "allow_code", False)))
    return None if options == ModelFileOptions() else options


def _load(args, weights_needed: bool = True):
    from senet_viz.models.zoo import is_model_file, load_model

    weights = getattr(args, "weights", None)
    if not weights_needed and weights is None and not is_model_file(args.model):
        weights = "random"  # a zoo network's gates and cost need no weights (a model file carries its own)
    try:
        return load_model(args.model, weights=weights, device=args.device,
                          reduction=getattr(args, "reduction", None), options=_file_options(args))
    except KeyError as exc:
        raise UserError(str(exc) if type(exc) is not KeyError else exc.args[0]) from exc
    except (WeightsError, ValueError) as exc:
        raise UserError(str(exc)) from exc


def _images(args, loaded, per_class: bool = True):
    """The images of ``--images``: labelled by ``--labels FILE`` (ImageNet's flat validation layout) or by their
    names / class folders; then ``--per-class K`` (unless the command applies it itself), ``--shard``, ``--limit``."""
    from senet_viz.data.imagenet import labels_file_source, take_per_class

    labels, devkit = getattr(args, "labels", None), getattr(args, "devkit_meta", None)
    if devkit and not labels:
        raise UserError("--devkit-meta goes with --labels ILSVRC2012_validation_ground_truth.txt")
    try:
        if labels:
            images = labels_file_source(args.images, labels, loaded.class_names, loaded.wnids, devkit=devkit)
        else:
            # the local user's own data set: no bounds on the walk (the served app's are folder_source's defaults),
            # and files that are not images are named, so the user sees which ones were left out
            images = folder_source(args.images, class_names=loaded.class_names, wnids=loaded.wnids,
                                   max_entries=None, max_depth=None, max_seconds=None, name_non_images=True)
        if per_class and getattr(args, "per_class", None) is not None:
            images = take_per_class(images, args.per_class)
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


@contextlib.contextmanager
def _ranks(args):
    """The ranks of a torchrun / srun launch (one process: a stand-in whose collectives are the identity).
    ``args.device`` becomes this rank's device. The process group is destroyed when the command ends, also on
    errors; only rank 0 prints, so another rank's error names its rank."""
    from senet_viz.inference.distributed import DistributedError, process_group

    try:
        with process_group(args.device) as group:
            args.device = group.device
            try:
                yield group
            except UserError as exc:
                if group.main:
                    raise
                raise UserError(f"rank {group.rank}: {exc}") from exc
    except DistributedError as exc:
        raise UserError(str(exc)) from exc


def _agreed(group, setup):
    """Run ``setup()`` (loading, listing, checking) on every rank and fail together if any rank fails: rank 0
    reports the first failure, the others exit 2 quietly. Without it a rank that failed alone would leave the
    others waiting in the next collective."""
    try:
        value, error = setup(), None
    except UserError as exc:
        value, error = None, str(exc)
    failed = group.first_error(error)
    if failed is not None:
        rank, message = failed
        if not group.main:
            raise SystemExit(2)
        raise UserError(message if rank == 0 else f"rank {rank}: {message}")
    return value


def _select(loaded, spec: str | None):
    try:
        return select_blocks(loaded.blocks, spec)
    except BlockSelectionError as exc:
        raise UserError(str(exc)) from exc


def cmd_models(args) -> None:
    if args.all or args.names:
        _census(args)
        return
    from senet_viz.models.zoo import REGISTRY, weights_status

    rows = [{"name": s.name, "source": s.source, "family": s.family, "paper_name": s.paper_name,
             "weights": weights_status(s.name)} for s in REGISTRY.values()]
    if args.blocks:
        from senet_viz.gates.blocks import find_se_blocks

        for row in rows:
            spec = REGISTRY[row["name"]]
            row["se_blocks"] = len(find_se_blocks(spec.build(), spec.input_size))
    if args.json:
        _print_json(rows)
        return
    for r in rows:
        extra = f"  {r['se_blocks']:3d} SE" if "se_blocks" in r else ""
        print(f"{r['name']:28s} {r['family']:12s} {r['weights']:18s}{extra}  {r['paper_name']}")


def _census(args) -> None:
    """``models --all``: every timm and torchvision architecture with channel gates (built without weights, on
    the meta device, cached; see :func:`senet_viz.gates.census.gate_census`)."""
    from senet_viz.gates.census import gate_census

    names = [n.strip() for n in args.names.split(",") if n.strip()] if args.names else None
    if names is not None and not names:
        raise UserError("--names takes comma-separated architectures, e.g. timm:seresnet50,torchvision:regnet_y_400mf")
    progress = None
    if not args.json and sys.stderr.isatty():
        def progress(i: int, n: int, name: str) -> None:
            sys.stderr.write(f"\rcensus: {i}/{n} built ({name[:40]:40s})")
            if i >= n:
                sys.stderr.write("\n")
            sys.stderr.flush()
    census = gate_census(names, refresh=args.refresh, progress=progress)
    if args.json:
        _print_json(census)
        return
    for name, entry in sorted(census["models"].items()):
        if not entry["gates"]:
            continue
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(entry["kinds"].items()))
        print(f"{name:52s} {entry['gates']:4d} gates  {kinds}")
    with_gates = sum(1 for e in census["models"].values() if e["gates"])
    print(f"{with_gates} of {census['covered']} architectures have channel gates "
          f"({census['built']} built now in {census['seconds']} s, {census['covered'] - census['built']} read from "
          f"the cache {census['cache']})")
    for kind, agg in sorted(census["per_kind"].items()):
        print(f"  {kind:16s} {agg['models']:4d} architectures, {agg['gates']:6d} gates")
    for cls, count in sorted(census["not_se"].items()):
        print(f"  not SE: {cls} in {count} architectures")
    for name, error in census["errors"].items():
        print(f"  not built: {name}: {error}")


def cmd_blocks(args) -> None:
    loaded = _load(args, weights_needed=False)
    rows = [{"name": b.name, "path": b.path, "gate": b.gate_path, "stage": b.stage, "index": b.index,
             "channels": b.channels, "params": b.params, "gate_fn": b.gate_fn, "kind": b.kind,
             "gate_kind": b.gate_kind, "gain": b.gain} for b in loaded.blocks]
    if args.json:
        _print_json(rows)
        return
    print(f"{loaded.name}: {len(rows)} SE blocks")
    for r in rows:
        kind = "" if r["gate_kind"] == "se" else f"  [{r['gate_kind']}]"
        print(f"{r['name']:8s} stage {r['stage']}  C={r['channels']:5d}  params={r['params']:9,d}  {r['path']}{kind}")


def cmd_cost(args) -> None:
    from senet_viz.analysis.cost import model_cost

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
    from senet_viz.data.store import ExcitationWriter
    from senet_viz.inference.run import run_model

    with _ranks(args) as group:
        def setup():
            loaded = _load(args)
            images = _images(args, loaded)
            blocks = _select(loaded, args.blocks) if args.blocks else loaded.blocks
            if args.chunk < 1:
                raise UserError(f"--chunk must be at least 1, got {args.chunk}")
            return loaded, images, blocks

        def open_writer():  # rank 0 only, once every rank is ready (no half-written file after a failed setup)
            if not group.main:
                return None
            meta = {"model": loaded.name, "weights": loaded.weights_source, "weights_id": loaded.weights_id,
                    "class_names": images.class_names, "shard": args.shard}
            try:
                return ExcitationWriter(args.out, blocks, meta)
            except OSError as exc:
                raise UserError(f"cannot write {args.out}: {exc}") from exc

        loaded, images, blocks = _agreed(group, setup)
        writer = _agreed(group, open_writer)
        progress = _progress("extract", args.json or not group.main)
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
                    result = run_model(loaded, chunk, blocks=blocks, batch_size=args.batch_size,
                                       keep_logits=False, num_workers=args.workers, precision=args.precision)
                if not group.main:
                    if result is not None:
                        group.send_result(result)
                    continue
                for src in range(min(group.world, len(starts) - first)):
                    part = result if src == 0 else group.recv_result(src)
                    writer.write(part)
                    skipped += part.skipped
                    n_done += min(args.chunk, total - starts[first + src])
                    if progress:
                        progress(n_done, total)
            rows = writer.rows if writer is not None else 0
    if not group.main:
        return
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
    from senet_viz.inference.distributed import evaluate_sharded

    with _ranks(args) as group:
        def setup():
            loaded = _load(args)
            images = _images(args, loaded)
            blocks = _select(loaded, args.ablate)
            if args.ablate and not blocks:
                raise UserError(f"--ablate {args.ablate!r} selects no SE block")
            return loaded, images, blocks

        loaded, images, blocks = _agreed(group, setup)
        try:
            out = evaluate_sharded(group, loaded, images, blocks, mode=args.mode,
                                   calibrate_on_eval=args.calibrate_on_eval, batch_size=args.batch_size,
                                   progress=_progress("evaluate", args.json or not group.main),
                                   precision=args.precision)
        except ValueError as exc:  # e.g. no calibration image could be read
            raise UserError(str(exc)) from exc
    if out is None:  # not rank 0
        return
    if args.json:
        _print_json(out.to_dict())
        return
    pct = lambda v: "n/a" if v is None else f"{v:.2%}"  # noqa: E731
    print(f"{loaded.name} ({loaded.weights_source}) on {out.n_images} images, {out.n_skipped} skipped")
    print(f"full network: top-1 {pct(out.full_top1)}, top-5 {pct(out.full_top5)}, {out.params:,} parameters")
    if blocks:
        kl = "n/a" if out.kl is None else f"{out.kl:.4f} nats"
        print(f"{args.mode} on {', '.join(out.ablated)}: top-1 {pct(out.top1)}, top-5 {pct(out.top5)}, "
              f"agreement {pct(out.agreement)}, KL {kl}, -{out.params_removed:,} parameters")
    for s in out.skipped:
        print(f"  skipped {s.file}: {s.reason}")


def _detail_classes(spec: str | None) -> list[str] | None:
    """``--detail-classes``: auto (None), none ([]) or a comma-separated list of class names / indices."""
    if spec is None or spec.strip().lower() == "auto":
        return None
    if spec.strip().lower() == "none":
        return []
    return [c.strip() for c in spec.split(",") if c.strip()]


def cmd_stats(args) -> None:
    from senet_viz.analysis.stats import stats_from_parquet

    detail = _detail_classes(args.detail_classes)
    total = None
    for path in args.excitations:  # one shard at a time, one block column at a time: memory is the statistics'
        try:
            part = stats_from_parquet(path, bins=args.bins, detail_classes=detail)
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"cannot read excitations {path}: {exc}") from exc
        try:
            total = part if total is None else total.merge(part)
        except ValueError as exc:
            raise UserError(f"cannot merge {path}: {exc}") from exc
    assert total is not None  # argparse requires at least one file
    if args.out:
        total.save(args.out)
    if args.bundle:
        from senet_viz.analysis.bundle import provenance, write_bundle
        from senet_viz.data.store import read_meta

        metas = [read_meta(path) for path in args.excitations]
        first = metas[0]
        prov = provenance(model=total.model, weights=str(first.get("weights", "?")),
                          weights_digest=str(first.get("weights_id", "?")),
                          images=", ".join(str(p) for p in args.excitations), n_images=total.n_images(),
                          n_classes=len(total.classes()), shards=len(metas))
        args.bundle = write_bundle(args.bundle, total, prov)
    indices = total.indices(threshold=args.threshold)
    if args.json:
        _print_json(indices.to_dict(orient="records"))
        return
    with_classes = indices["n_classes"].max() if len(indices) else 0
    print(f"{total.model}: {int(indices['n_images'].max()) if len(indices) else 0} images, {with_classes} classes")
    cols = ["block", "stage", "channels", "specificity", "specificity_method", "saturation", "mean_gate",
            "mean_abs_1_minus_s", "share_near_0", "cross_class_corr"]
    print(indices[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    kept = len(total.detailed_classes())
    print(f"per-channel histograms kept for {kept} of {len(total.classes())} classes and for all images; means and "
          f"M2 for every class ({total.nbytes() / 2**20:,.1f} MiB of statistics)")
    if args.out:
        print(f"wrote {args.out}")
    if args.bundle:
        print(f"wrote {args.bundle} (opens in the app: Work from -> An analysis file)")


FIGURES = ("fig6", "fig7", "distributions", "depth", "heatmap")
DEFAULT_FIGURE_CLASSES = 16
"""fig6 / fig7 / distributions show every class up to this many, else the four with the most images."""


def cmd_figure(args) -> None:
    from senet_viz import plots
    from senet_viz.analysis.stats import ALL, GateStats

    try:
        stats = GateStats.load(args.stats)
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"cannot read statistics {args.stats}: {exc}") from exc
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    blocks = [b.strip() for b in args.blocks.split(",")] if args.blocks else None
    table = stats.class_table()
    real = table[table["class_index"] >= 0]
    palette = list(real["class"])  # every class: a class keeps its colour whatever is shown
    # The figures read bounded views of the statistics (chosen blocks and classes), never every class x channel.
    default = None if len(real) <= DEFAULT_FIGURE_CLASSES else stats.largest_classes(4)
    try:
        if args.kind == "fig6":
            frame = stats.frame(blocks=blocks, classes=classes or default, hist=False)
            fig = plots.fig6(frame, blocks=blocks, classes=classes or default, n_channels=args.channels,
                             seed=args.seed, all_channels=args.all_channels, all_classes=palette)
        elif args.kind == "fig7":
            if not classes and real.empty:
                raise UserError("no class to show")
            cls = classes[0] if classes else (default or palette)[0]
            block = blocks[0] if blocks else stats.blocks[-1].name
            frame = stats.frame(blocks=[block], classes=[cls], hist=False)
            fig = plots.fig7(frame, block, cls, n_channels=args.channels, seed=args.seed,
                             all_channels=args.all_channels, all_classes=palette)
        elif args.kind == "distributions":
            shown = classes or (None if default is None else [*default, ALL])
            fig = plots.distributions(stats.block_frame(classes=shown), stage=args.stage, blocks=blocks,
                                      classes=shown, all_classes=palette)
        elif args.kind == "depth":
            second = GateStats.load(args.second).indices() if args.second else None
            fig = plots.depth_profile(stats.indices(), second=second)
        else:
            block = blocks[0] if blocks else stats.blocks[-1].name
            labels, counts, means = stats.class_means(block, classes, include_all=bool(classes and ALL in classes))
            fig = plots.heatmap_matrix(means, labels, counts, model=stats.model, block=block, all_classes=palette)
        plots.save_figure(fig, args.out)
    except (ValueError, KeyError) as exc:
        raise UserError(str(exc) or "no class to show") from exc
    except RuntimeError as exc:  # e.g. PNG export without a browser for kaleido
        raise UserError(str(exc)) from exc
    if args.json:
        _print_json({"out": str(args.out), "kind": args.kind, "title": fig.layout.title.text})
    else:
        print(f"wrote {args.out}")


def cmd_paper(args) -> None:
    from senet_viz import plots
    from senet_viz.analysis.paper import pick_classes
    from senet_viz.inference.distributed import paper_preset_sharded

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    with _ranks(args) as group:
        def setup():
            loaded = _load(args)
            images = _images(args, loaded, per_class=False)  # the preset takes --per-class itself
            if args.per_class < 1:
                raise UserError(f"--per-class must be at least 1, got {args.per_class}")
            try:
                pick_classes(images, classes, loaded.wnids)  # a wrong --classes fails here, on every rank alike
            except ValueError as exc:
                raise UserError(str(exc)) from exc
            return loaded, images

        loaded, images = _agreed(group, setup)
        try:
            result = paper_preset_sharded(group, loaded, images, classes=classes, per_class=args.per_class,
                                          batch_size=args.batch_size, precision=args.precision,
                                          progress=_progress("paper preset", args.json or not group.main))
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    if result is None:  # not rank 0
        return
    from senet_viz.analysis.bundle import provenance, write_bundle

    args.out.mkdir(parents=True, exist_ok=True)
    channels = result.stats.frame(classes=result.classes, hist=False)  # bounded: the preset's classes and all
    written = {"stats": str(args.out / "stats.parquet")}
    result.stats.save(args.out / "stats.parquet")
    prov = provenance(model=loaded.name, weights=loaded.weights_source, weights_digest=loaded.weights_id,
                      images=str(args.images), n_images=result.n_images, n_classes=len(result.images_per_class),
                      n_skipped=len(result.skipped), protocol="paper", images_per_class=result.images_per_class)
    written["bundle"] = str(write_bundle(args.out / "analysis.senetviz.zip", result.stats, prov))
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
    from senet_viz.analysis.ablation import MODES, pareto_front, sweep_configs
    from senet_viz.inference.distributed import sweep_sharded

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    with _ranks(args) as group:
        def setup():
            unknown = [m for m in modes if m not in MODES]
            if unknown or not modes:
                raise UserError(f"unknown ablation mode {unknown[0] if unknown else args.modes!r}; "
                                "use identity and/or mean")
            loaded = _load(args)
            images = _images(args, loaded)
            configs = sweep_configs(loaded.blocks)
            if args.kinds:
                kinds = {k.strip() for k in args.kinds.split(",")}
                configs = [c for c in configs if c[0] in kinds]
                if not configs:
                    raise UserError(f"--kinds {args.kinds!r} selects no configuration; use block, stage and/or last")
            return loaded, images, configs

        loaded, images, configs = _agreed(group, setup)
        try:
            frame = sweep_sharded(group, loaded, images, modes, configs, batch_size=args.batch_size,
                                  progress=_progress("sweep", args.json or not group.main), precision=args.precision)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    if frame is None:  # not rank 0
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    if args.figure:
        from senet_viz import plots
        plots.save_figure(plots.sweep_figure(frame), args.figure)
    if args.json:
        _print_json({"out": str(args.out), "rows": frame.to_dict(orient="records")})
        return
    cols = ["config", "mode", "top1", "d_top1", "agreement", "kl", "params_removed", "params_saved_pct"]
    full = frame["full_top1"].iloc[0]
    full_text = "n/a (no labelled image)" if full is None or full != full else f"{full:.2%}"
    print(f"{loaded.name}: {int(frame['n_images'].iloc[0])} evaluation images, "
          f"{int(frame['n_calibration'].iloc[0])} calibration images; full top-1 {full_text}")
    print(frame[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("Pareto front (params saved vs top-1 change):")
    print(pareto_front(frame)[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {args.out}")


def cmd_train(args) -> None:
    from senet_viz.models.embedded.command import run_train_command

    try:
        out = run_train_command(args)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    if args.json:
        _print_json(out)


IMAGES_HELP = ("folder: ImageNet-style names (n01443537_goldfish.JPEG), class sub-folders (wnid folders: "
               "val/n01440764/*.JPEG), or ImageNet's flat validation folder with --labels")
WEIGHTS_HELP = ("weights file: .safetensors, .pth/.pt (weights_only), .tflite; with --model file.py:build, the "
                "state dict of the module it builds (model files carry their own weights)")


def _parent(*arguments: tuple[tuple[str, ...], dict]) -> argparse.ArgumentParser:
    """A parent parser holding ``arguments`` ((flags, keywords) pairs), for commands that share them."""
    p = argparse.ArgumentParser(add_help=False)
    for flags, kwargs in arguments:
        p.add_argument(*flags, **kwargs)
    return p


# Options shared by several commands, each defined once.
COMMON = _parent((("--device",), {"default": "auto", "help": "auto (CUDA if present), cpu or cuda"}),
                 (("--json",), {"action": "store_true", "help": "print one JSON document"}))
MODEL_HELP = ("a zoo name (`python -m senet_viz models`), any timm or torchvision model (`timm:<name>` / "
              "`torchvision:<name>`; a bare name when only one library has it; timm pretrained tags as in "
              "seresnext101_32x8d.ah_in1k), or your own model: a TorchScript file (.pt/.ts), a torch.export "
              "program (.pt2), an .onnx file, or Python code file.py:build / package.module:build (with --allow-code)")


def _model_parent(classes_flags: tuple[str, ...]) -> argparse.ArgumentParser:
    """--model and the options of a model file (``classes_flags``: the class-names file's flags)."""
    return _parent(
        (("--model",), {"required": True, "help": MODEL_HELP}),
        (("--allow-code",), {"action": "store_true",
                             "help": "allow --model file.py:build / package.module:build: it runs that Python code "
                                     "with your permissions (your TorchScript and .pt2 files, which can carry code "
                                     "too, load without it: the CLI trusts your files, the dashboard does not)"}),
        (("--input-size",), {"metavar": "C,H,W", "help": "model file: the input it takes (default: the file's own "
                                                         "shape, else 3,224,224; 1 channel reads images as grey)"}),
        (("--resize",), {"type": int, "help": "model file: short side before the center crop (default H / 0.875)"}),
        (classes_flags, {"dest": "class_file", "type": Path, "metavar": "FILE",
                         "help": "model file: its class names, one per line (default: the file's labels, else "
                                 "class 0..N-1)"}),
        (("--mean",), {"help": "model file: normalisation mean per channel, e.g. 0.485,0.456,0.406 (ImageNet's "
                               "by default; 0.5 for one channel)"}),
        (("--std",), {"help": "model file: normalisation std per channel (ImageNet's by default; 0.5 for one "
                              "channel)"}))


MODEL = _model_parent(("--classes", "--class-names"))
MODEL_PAPER = _model_parent(("--class-names",))  # `paper --classes` picks the protocol's classes
WEIGHTS = _parent((("--weights",), {"help": WEIGHTS_HELP}))
IMAGES = _parent(
    (("--images",), {"required": True, "help": IMAGES_HELP}),
    (("--labels",), {"type": Path, "help": "labels for a flat folder of ILSVRC2012_val_*.JPEG: Kaggle's "
                                           "LOC_val_solution.csv, or the devkit's "
                                           "ILSVRC2012_validation_ground_truth.txt with --devkit-meta"}),
    (("--devkit-meta",), {"type": Path, "help": "with a devkit ground-truth file: the devkit's data/meta.mat (needs "
                                                "scipy) or a map_clsloc.txt, mapping its class ids to wnids"}))
PER_CLASS = _parent((("--per-class",), {"type": int, "help": "take the first K images of every class by sorted file "
                                                             "key (the paper used 50); unlabelled images are left "
                                                             "out"}))
PART = _parent((("--shard",), {"help": "process part i of n (0-based), e.g. 0/4; the parts combine"}),
               (("--limit",), {"type": int, "help": "use only the first N images"}))
ABLATE_MODE = _parent(
    (("--mode",), {"choices": ("identity", "mean"), "default": "identity",
                   "help": "identity: gate = 1 (the paper's removal); mean: gate = its mean over a calibration "
                           "split (20%% of the images, not scored)"}),
    (("--calibrate-on-eval",), {"action": "store_true",
                                "help": "with --mode mean: fit the mean gates on all images and score on them too"}))
FIGURE_SAMPLING = _parent((("--seed",), {"type": int, "default": 0}))
PRECISION = _parent((("--precision",), {
    "choices": ("auto", "fp32", "bf16", "fp16"), "default": "auto",
    "help": "what the forwards run in: auto (bf16 on GPUs with native bf16, fp16 on older GPUs, fp32 on the CPU), "
            "or one of fp32 (exact gates: also without TF32 on a GPU), bf16, fp16; a batch that overflows is redone "
            "in fp32"}))


def _batch_size(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--batch-size", type=int, default=default)


def _channels(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--channels", type=int, default=50, help=help_text)


def _prog() -> str:
    """How the user started us: the console script ``senet-viz`` or ``python -m senet_viz``."""
    return "senet-viz" if Path(sys.argv[0]).name == "senet-viz" else "python -m senet_viz"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_prog(), description=__doc__.split("\n\nSize:")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, func, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[COMMON, *parents])
        p.set_defaults(func=func)
        return p

    p = command("models", "list models, where their weights come from; --all: every timm / torchvision "
                          "architecture with channel gates", cmd_models)
    p.add_argument("--blocks", action="store_true", help="also count SE blocks (builds every model, slower)")
    p.add_argument("--all", action="store_true",
                   help="every timm and torchvision architecture with channel gates, their kinds and counts (built "
                        "without weights; a few minutes the first time, then cached)")
    p.add_argument("--names", help="with or instead of --all: only these architectures (timm:<name>, "
                                   "torchvision:<name> or a bare timm name), comma-separated")
    p.add_argument("--refresh", action="store_true", help="with --all / --names: build again, ignoring the cache")

    p = command("blocks", "list SE blocks: name, module path, stage, channels, parameters", cmd_blocks, MODEL)
    p.add_argument("--weights", help="weights file (not needed to list blocks)")

    p = command("cost", "parameters and GMACs per SE block and stage; no weights needed", cmd_cost, MODEL)
    p.add_argument("--ablate", help="SE blocks to remove: SE_5_1,SE_5_2 | stage:5 | stage:3,4,5 | last:3")
    p.add_argument("--reduction", type=int, help="build with SE reduction ratio r (SE-ResNet/ResNeXt families)")
    p.add_argument("--per-block", action="store_true", help="with --json: include per-block and per-stage rows")

    p = command("extract", "capture every SE gate over a folder of images into Parquet", cmd_extract,
                MODEL, WEIGHTS, IMAGES, PER_CLASS, PART, PRECISION)
    _batch_size(p, 32)
    p.add_argument("--out", required=True, type=Path, help="output .parquet file")
    p.add_argument("--blocks", help="only these SE blocks (same syntax as --ablate); default all")
    p.add_argument("--chunk", type=int, default=1024,
                   help="images per row group (bounds memory); under torchrun the unit of work per rank")
    p.add_argument("--workers", type=int, default=None,
                   help="decode threads beside the network (default: one per core, up to 4 on the CPU, 8 on CUDA; "
                        "0 decodes on the main thread)")

    p = command("evaluate", "top-1/top-5 of the network, optionally with SE blocks removed or frozen", cmd_evaluate,
                MODEL, WEIGHTS, IMAGES, PER_CLASS, PART, ABLATE_MODE, PRECISION)
    _batch_size(p, 32)
    p.add_argument("--ablate", help="SE blocks: SE_5_1,SE_5_2 | stage:5 | last:3")

    p = command("sweep", "ablate every SE block, stage and last-k set in each mode; accuracy vs parameters saved",
                cmd_sweep, MODEL, WEIGHTS, IMAGES, PER_CLASS, PRECISION)
    p.add_argument("--modes", default="identity,mean", help="identity, mean or both (comma-separated)")
    p.add_argument("--kinds", help="restrict to block, stage and/or last (comma-separated)")
    _batch_size(p, 64)
    p.add_argument("--out", required=True, type=Path, help="output .csv")
    p.add_argument("--figure", type=Path, help="also write the Pareto figure (.html/.png)")

    p = command("train", "train the embedded SE-ResNet on Fashion-MNIST (weights, metrics, model card)", cmd_train)
    from senet_viz.models.embedded.command import add_train_arguments

    add_train_arguments(p)

    p = command("stats", "per-class gate statistics and indices from extracted Parquet shards", cmd_stats)
    p.add_argument("--excitations", nargs="+", required=True, type=Path, help="one or more extract outputs")
    p.add_argument("--out", type=Path, help="write the statistics (mergeable .parquet) to this file")
    p.add_argument("--bundle", type=Path, help="also write an analysis bundle (.senetviz.zip: statistics, model, "
                                               "weights digest, counts, this command) that the app opens alone")
    p.add_argument("--bins", type=int, default=50, help="histogram bins on [0, 1]")
    p.add_argument("--threshold", type=float, default=0.9, help="saturation threshold on the mean gate")
    p.add_argument("--detail-classes", help="classes that keep per-channel histograms (percentiles within a class): "
                                            "auto (default: every class when at most 64), none, or names/indices "
                                            "a,b,c; means and std are kept for every class")

    p = command("figure", "draw a figure from saved statistics (.html, or .png/.svg with Chromium)", cmd_figure,
                FIGURE_SAMPLING)
    p.add_argument("--stats", required=True, type=Path, help="output of `stats --out`")
    p.add_argument("--kind", required=True, choices=FIGURES)
    p.add_argument("--classes", help="comma-separated class names (default: all in the statistics; for fig6, fig7 "
                                     "and distributions with more than 16 classes, the 4 with the most images)")
    p.add_argument("--blocks", help="comma-separated block names (fig6 default: the paper's preset)")
    p.add_argument("--stage", type=int, help="distributions: one stage")
    p.add_argument("--second", type=Path, help="depth: statistics of a second model for the same chart")
    _channels(p, "channels sampled for fig6/fig7")
    p.add_argument("--all-channels", action="store_true", help="fig6/fig7: every channel")
    p.add_argument("--out", required=True, type=Path, help=".html, .png, .svg or .pdf")

    p = command("paper", "the paper's Fig. 6/7 protocol on a folder of labelled images, in one call", cmd_paper,
                MODEL_PAPER, WEIGHTS, IMAGES, FIGURE_SAMPLING, PRECISION)  # --per-class: the protocol's own
    p.add_argument("--classes", help="class names or wnids (default: goldfish, pug, airliner, cliff if present)")
    p.add_argument("--per-class", type=int, default=50, help="images per class (the paper used 50)")
    _channels(p, "channels sampled per block (the paper shows 50)")
    _batch_size(p, 32)
    p.add_argument("--out", required=True, type=Path, help="output folder for stats and figures")

    from senet_viz.cli.channels import add_channels_parser  # its own module: senet_viz/cli/channels.py

    add_channels_parser(sub, [COMMON])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
