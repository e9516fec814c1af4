"""``stats``, ``figure`` and ``paper``: gate statistics from extracted Parquet shards, figures from saved statistics
(neither runs a network nor imports torch), and the paper's Fig. 6 / Fig. 7 protocol from images in one call."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from senet_viz.cli.common import (
    UserError,
    add_batch_size,
    add_channel_count,
    agreed,
    image_set,
    load_network,
    names_list,
    print_json,
    progress,
    ranks,
)

if TYPE_CHECKING:
    import pandas as pd

    from senet_viz.analysis.chance import ChanceOptions

FIGURES = ("fig6", "fig7", "distributions", "depth", "heatmap")
DEFAULT_FIGURE_CLASSES = 16
"""fig6 / fig7 / distributions show every class up to this many, else the four with the most images."""


def add_stats(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_stats)
    p.add_argument("--excitations", nargs="+", required=True, type=Path, help="one or more extract outputs")
    p.add_argument("--out", type=Path, help="write the statistics (mergeable .parquet) to this file")
    p.add_argument("--bundle", type=Path, help="also write an analysis bundle (.senetviz.zip: statistics, model, "
                                               "weights digest, counts, this command) that the app opens alone")
    p.add_argument("--bins", type=int, default=50, help="histogram bins on [0, 1]")
    p.add_argument("--threshold", type=float, default=0.9, help="saturation threshold on the mean gate")
    p.add_argument("--detail-classes", help="classes that keep per-channel histograms (percentiles within a class): "
                                            "auto (default: every class when at most 64), none, or names/indices "
                                            "a,b,c; means and std are kept for every class")
    add_chance(p)


def add_chance(p: argparse.ArgumentParser, seed: bool = True) -> None:
    """--permutations / --bootstrap / --seed / --chance-images: the chance table's settings (``seed``: add --seed;
    `paper` has one already, for the channel sample, and uses it for both)."""
    from senet_viz.analysis.chance import ChanceOptions

    d = ChanceOptions()
    if seed:
        p.add_argument("--seed", type=int, default=d.seed, help="seed of the label permutations and bootstrap")
    p.add_argument("--permutations", type=int, default=d.permutations,
                   help=f"label permutations behind each chance level, band and p value (default {d.permutations}; "
                        "p = (k + 1) / (permutations + 1))")
    p.add_argument("--bootstrap", type=int, default=d.bootstrap,
                   help=f"Poisson bootstrap resamples behind each {d.level * 100:.0f}%% interval "
                        f"(default {d.bootstrap})")
    p.add_argument("--chance-images", type=int, default=None, metavar="N",
                   help="compute the chance table on a seeded sample of at most N labelled images (bounds its "
                        "memory and time; default: every labelled image)")


def chance_options(args: argparse.Namespace) -> ChanceOptions:
    from senet_viz.analysis.chance import ChanceOptions

    for name in ("permutations", "bootstrap"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name} must be at least 0, got {getattr(args, name)}")
    if args.chance_images is not None and args.chance_images < 1:
        raise UserError(f"--chance-images must be at least 1, got {args.chance_images}")
    return ChanceOptions(permutations=args.permutations, bootstrap=args.bootstrap, seed=args.seed,
                         max_images=args.chance_images)


def chance_from_shards(paths: Sequence[Path], options: ChanceOptions, threshold: float) -> pd.DataFrame:
    """The chance table of extract shards grouped by label, one block column at a time: memory is one block's
    gates of the (at most ``options.max_images``, a seeded sample) labelled images, whatever the number of blocks."""
    import numpy as np
    import pandas as pd

    from senet_viz.analysis.chance import chance_table
    from senet_viz.data.store import batch_gates, batch_ints, iter_batches, read_shards_meta

    paths, meta = read_shards_meta(paths)
    labels = np.concatenate([batch_ints(b, "label") for _, b in iter_batches(paths, ["label"], 1 << 16)])
    rows = np.flatnonzero(labels >= 0)
    if options.max_images is not None and len(rows) > options.max_images:
        rng = np.random.default_rng(options.seed)
        rows = np.sort(rng.choice(rows, options.max_images, replace=False))
    options = replace(options, max_images=None)  # sampled here, once for every block
    frames = []
    for block in meta["blocks"]:
        name, channels = block["name"], int(block["channels"])
        gates = np.empty((len(rows), channels), dtype=np.float16)
        done = 0
        for first, batch in iter_batches(paths, [name], max(1, (64 << 20) // (2 * channels))):
            n = batch.num_rows
            lo, hi = np.searchsorted(rows, [first, first + n])
            if hi > lo:
                gates[done:done + hi - lo] = batch_gates(batch, name, channels)[rows[lo:hi] - first]
                done += hi - lo
        frames.append(chance_table({name: gates}, labels[rows], threshold, options, blocks=[name]))
    return pd.concat(frames, ignore_index=True)


def chance_records(chance: pd.DataFrame) -> list[dict]:
    """The chance table as JSON records (NaN as null)."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in json.loads(chance.to_json(orient="records", double_precision=15))] if len(chance) else []


def save_chance(chance: pd.DataFrame, stem: Path) -> dict[str, str]:
    """``<stem>.chance.csv`` and ``<stem>.chance.json`` beside the statistics; returns their paths."""
    csv_path, json_path = stem.with_name(stem.name + ".chance.csv"), stem.with_name(stem.name + ".chance.json")
    chance.to_csv(csv_path, index=False)
    json_path.write_text(json.dumps(chance_records(chance), indent=2))
    return {"chance_csv": str(csv_path), "chance_json": str(json_path)}


def print_chance(indices: pd.DataFrame, chance: pd.DataFrame) -> None:
    """Each index with its interval beside its chance level, p and whether it is above chance, one line per block."""
    import pandas as pd

    from senet_viz.plots.depth import chance_caption, chance_index_table

    names = ("eta2", "spread", "cross_class_corr", "saturation")
    table = chance_index_table(indices, chance, names)

    def num(v: float, spec: str = ".3f") -> str:
        return "n/a" if pd.isna(v) else format(v, spec)

    out = pd.DataFrame({"block": table["block"]})
    for name in names:
        out[name] = [f"{num(v)} [{ci}]" if ci else num(v) for v, ci in zip(table[name], table[f"{name} 95% interval"],
                                                                             strict=True)]
        if name != "saturation":
            out[f"{name} chance (p)"] = [f"{num(c)} (p {num(p, '.3g')})" for c, p in
                                         zip(table[f"{name} chance"], table[f"{name} p"], strict=True)]
            out[f"{name} above chance"] = table[f"{name} above chance"]
    print(chance_caption(chance))
    print(out.to_string(index=False))


def add_figure(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_figure)
    p.add_argument("--stats", required=True, type=Path, help="output of `stats --out`")
    p.add_argument("--kind", required=True, choices=FIGURES)
    p.add_argument("--classes", help="comma-separated class names (default: all in the statistics; for fig6, fig7 "
                                     "and distributions with more than 16 classes, the 4 with the most images)")
    p.add_argument("--blocks", help="comma-separated block names (fig6 default: the paper's preset)")
    p.add_argument("--stage", type=int, help="distributions: one stage")
    p.add_argument("--second", type=Path, help="depth: statistics of a second model for the same chart")
    add_channel_count(p, "channels sampled for fig6/fig7")
    p.add_argument("--all-channels", action="store_true", help="fig6/fig7: every channel")
    p.add_argument("--out", required=True, type=Path, help=".html, .png, .svg or .pdf")


def add_paper(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_paper)
    p.add_argument("--classes", help="class names or wnids (default: goldfish, pug, airliner, cliff if present)")
    p.add_argument("--per-class", type=int, default=50, help="images per class (the paper used 50)")
    add_channel_count(p, "channels sampled per block (the paper shows 50)")
    add_batch_size(p, 32)
    p.add_argument("--out", required=True, type=Path, help="output folder for stats and figures")
    add_chance(p, seed=False)


def detail_classes(spec: str | None) -> list[str] | None:
    """``--detail-classes``: auto (None), none ([]) or a comma-separated list of class names / indices."""
    if spec is None or spec.strip().lower() == "auto":
        return None
    if spec.strip().lower() == "none":
        return []
    return [c.strip() for c in spec.split(",") if c.strip()]


def cmd_stats(args: argparse.Namespace) -> None:
    from senet_viz.analysis.stats import stats_from_parquet

    detail = detail_classes(args.detail_classes)
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
    try:
        chance = chance_from_shards(args.excitations, chance_options(args), args.threshold)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot compute the chance table of {args.excitations[0]}: {exc}") from exc
    written = {}
    if args.out:
        total.save(args.out)
        written = save_chance(chance, args.out.with_suffix(""))
    if args.bundle:
        from senet_viz.analysis.bundle import provenance, write_bundle
        from senet_viz.data.store import read_meta

        metas = [read_meta(path) for path in args.excitations]
        first = metas[0]
        prov = provenance(model=total.model, weights=str(first.get("weights", "?")),
                          weights_digest=str(first.get("weights_id", "?")),
                          images=", ".join(str(p) for p in args.excitations), n_images=total.n_images(),
                          n_classes=len(total.classes()), shards=len(metas))
        args.bundle = write_bundle(args.bundle, total, prov, chance=chance)
    indices = total.indices(threshold=args.threshold)
    if args.json:
        by_block = {r["block"]: r for r in chance_records(chance)}
        print_json([{**r, "chance": by_block.get(r["block"])} for r in indices.to_dict(orient="records")])
        return
    with_classes = indices["n_classes"].max() if len(indices) else 0
    print(f"{total.model}: {int(indices['n_images'].max()) if len(indices) else 0} images, {with_classes} classes")
    cols = ["block", "stage", "channels", "specificity", "specificity_method", "saturation", "mean_gate",
            "mean_abs_1_minus_s", "share_near_0", "cross_class_corr"]
    print(indices[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print_chance(indices, chance)
    kept = len(total.detailed_classes())
    print(f"per-channel histograms kept for {kept} of {len(total.classes())} classes and for all images; means and "
          f"M2 for every class ({total.nbytes() / 2**20:,.1f} MiB of statistics)")
    if args.out:
        print(f"wrote {args.out}, {written['chance_csv']} and {written['chance_json']}")
    if args.bundle:
        print(f"wrote {args.bundle} (opens in the app: Work from -> An analysis file)")


def cmd_figure(args: argparse.Namespace) -> None:
    from senet_viz.analysis.stats import GateStats
    from senet_viz.analysis.stats_accumulate import ALL
    from senet_viz.plots.depth import depth_profile
    from senet_viz.plots.distributions import distributions
    from senet_viz.plots.export import save_figure
    from senet_viz.plots.gates import fig6_matrix, fig7, heatmap_matrix, paper_preset_blocks

    try:
        stats = GateStats.load(args.stats)
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"cannot read statistics {args.stats}: {exc}") from exc
    classes, blocks = names_list(args.classes), names_list(args.blocks)
    table = stats.class_table()
    real = table[table["class_index"] >= 0]
    palette = list(real["class"])  # every class: a class keeps its colour whatever is shown
    # The figures read bounded views of the statistics (chosen blocks and classes), never every class x channel.
    default = None if len(real) <= DEFAULT_FIGURE_CLASSES else stats.largest_classes(4)
    try:
        if args.kind == "fig6":
            panels = sorted(stats.block_infos(blocks or paper_preset_blocks(stats.indices())), key=lambda b: b.order)
            means = {b.name: stats.class_means(b.name, classes or default, include_all=True) for b in panels}
            fig = fig6_matrix(means, model=stats.model, n_channels=args.channels, seed=args.seed,
                              all_channels=args.all_channels, all_classes=palette)
        elif args.kind == "fig7":
            if not classes and real.empty:
                raise UserError("no class to show")
            cls = classes[0] if classes else (default or palette)[0]
            block = blocks[0] if blocks else stats.blocks[-1].name
            frame = stats.frame(blocks=[block], classes=[cls], hist=False)
            fig = fig7(frame, block, cls, n_channels=args.channels, seed=args.seed,
                       all_channels=args.all_channels, all_classes=palette)
        elif args.kind == "distributions":
            shown = classes or (None if default is None else [*default, ALL])
            fig = distributions(stats.block_frame(classes=shown), stage=args.stage, blocks=blocks,
                                classes=shown, all_classes=palette)
        elif args.kind == "depth":
            second = GateStats.load(args.second).indices() if args.second else None
            fig = depth_profile(stats.indices(), second=second)
        else:
            block = blocks[0] if blocks else stats.blocks[-1].name
            labels, counts, means = stats.class_means(block, classes, include_all=bool(classes and ALL in classes))
            fig = heatmap_matrix(means, labels, counts, model=stats.model, block=block, all_classes=palette)
        save_figure(fig, args.out)
    except (ValueError, KeyError) as exc:
        raise UserError(str(exc) or "no class to show") from exc
    except RuntimeError as exc:  # e.g. PNG export without a browser for kaleido
        raise UserError(str(exc)) from exc
    if args.json:
        print_json({"out": str(args.out), "kind": args.kind, "title": fig.layout.title.text})
    else:
        print(f"wrote {args.out}")


def paper_chance(loaded, images, classes: list[str] | None, args: argparse.Namespace, options: ChanceOptions
                 ) -> pd.DataFrame:
    """The chance table of the preset's chosen classes: one pass over their images (at most --per-class each, the
    preset's own), keeping the gates (the preset streams them into statistics only)."""
    from senet_viz.analysis.chance import chance_table
    from senet_viz.analysis.paper import pick_classes, preset_items
    from senet_viz.inference.run import RunOptions, run_model

    items, _ = preset_items(images, args.per_class, set(pick_classes(images, classes, loaded.wnids)))
    run = run_model(loaded, replace(images, items=items), None,
                    RunOptions(batch_size=args.batch_size, precision=args.precision, keep_gates=True,
                               keep_logits=False, progress=progress("chance (gates of the chosen classes)",
                                                                    args.json)))
    return chance_table(run.gates, run.labels, options=options, blocks=[b.name for b in loaded.blocks])


def cmd_paper(args: argparse.Namespace) -> None:
    from senet_viz.analysis.paper import pick_classes
    from senet_viz.inference.distributed import paper_preset_sharded

    classes = names_list(args.classes)
    options = chance_options(args)
    with ranks(args) as group:
        def setup():
            loaded = load_network(args)
            images = image_set(args, loaded, per_class=False)  # the preset takes --per-class itself
            if args.per_class < 1:
                raise UserError(f"--per-class must be at least 1, got {args.per_class}")
            try:
                pick_classes(images, classes, loaded.wnids)  # a wrong --classes fails here, on every rank alike
            except ValueError as exc:
                raise UserError(str(exc)) from exc
            return loaded, images

        loaded, images = agreed(group, setup)
        try:
            result = paper_preset_sharded(group, loaded, images, classes=classes, per_class=args.per_class,
                                          batch_size=args.batch_size, precision=args.precision,
                                          progress=progress("paper preset", args.json or not group.main))
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    if result is None:  # not rank 0
        return
    from senet_viz.analysis.bundle import provenance, write_bundle
    from senet_viz.plots.export import save_figure
    from senet_viz.plots.gates import fig6_matrix, fig7, paper_preset_blocks

    args.out.mkdir(parents=True, exist_ok=True)
    stats, last = result.stats, result.stats.blocks[-1].name
    indices = stats.indices()
    written = {"stats": str(args.out / "stats.parquet")}
    result.stats.save(args.out / "stats.parquet")
    prov = provenance(model=loaded.name, weights=loaded.weights_source, weights_digest=loaded.weights_id,
                      images=str(args.images), n_images=result.n_images, n_classes=len(result.images_per_class),
                      n_skipped=len(result.skipped), protocol="paper", images_per_class=result.images_per_class)
    chance = paper_chance(loaded, images, classes, args, options)
    written.update(save_chance(chance, args.out / "stats"))
    written["bundle"] = str(write_bundle(args.out / "analysis.senetviz.zip", result.stats, prov, chance=chance))
    means = {b: stats.class_means(b, result.classes, include_all=True) for b in paper_preset_blocks(indices)}
    save_figure(fig6_matrix(means, model=stats.model, n_channels=args.channels, seed=args.seed),
                args.out / "fig6.html")
    channels = stats.frame([last], result.classes, hist=False)  # bounded: the last block, the preset's classes
    written["fig6"] = str(args.out / "fig6.html")
    for cls in result.classes:
        fig = fig7(channels, last, cls, n_channels=args.channels, seed=args.seed)
        path = args.out / f"fig7_{''.join(ch if ch.isalnum() else '_' for ch in cls)}.html"
        save_figure(fig, path)
        written[f"fig7 {cls}"] = str(path)
    out = {"model": loaded.name, "classes": result.images_per_class, "n_images": result.n_images,
           "n_skipped": len(result.skipped), "files": written,
           "indices": indices.to_dict(orient="records"), "chance": chance_records(chance)}
    if args.json:
        print_json(out)
    else:
        print(f"{loaded.name}: classes {result.images_per_class}, all-class curve over {result.n_images} images")
        print_chance(indices, chance)
        for name, path in written.items():
            print(f"  {name}: {path}")
