"""``models``, ``blocks`` and ``cost``: what the zoo holds, a network's SE blocks, and what they cost."""

from __future__ import annotations

import argparse
import sys

from senet_viz.cli.common import UserError, load_network, pick_blocks, print_json


def add_models(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_models)
    p.add_argument("--blocks", action="store_true", help="also count SE blocks (builds every model, slower)")
    p.add_argument("--all", action="store_true",
                   help="every timm and torchvision architecture with channel gates, their kinds and counts (built "
                        "without weights; a few minutes the first time, then cached)")
    p.add_argument("--names", help="with or instead of --all: only these architectures (timm:<name>, "
                                   "torchvision:<name> or a bare timm name), comma-separated")
    p.add_argument("--refresh", action="store_true", help="with --all / --names: build again, ignoring the cache")


def add_blocks(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_blocks)
    p.add_argument("--weights", help="weights file (not needed to list blocks)")


def add_cost(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_cost)
    p.add_argument("--ablate", help="SE blocks to remove: SE_5_1,SE_5_2 | stage:5 | stage:3,4,5 | last:3")
    p.add_argument("--reduction", type=int, help="build with SE reduction ratio r (SE-ResNet/ResNeXt families)")
    p.add_argument("--per-block", action="store_true", help="with --json: include per-block and per-stage rows")


def cmd_models(args: argparse.Namespace) -> None:
    if args.all or args.names:
        cmd_census(args)
        return
    import senet_viz.models.zoo  # noqa: F401  (registers the curated and the embedded models)
    from senet_viz.models.download import weights_status
    from senet_viz.models.registry import REGISTRY

    rows = [{"name": s.name, "source": s.source, "family": s.family, "paper_name": s.paper_name,
             "weights": weights_status(s.name)} for s in REGISTRY.values()]
    if args.blocks:
        from senet_viz.gates.blocks import find_se_blocks

        for row in rows:
            spec = REGISTRY[row["name"]]
            row["se_blocks"] = len(find_se_blocks(spec.build(), spec.input_size))
    if args.json:
        print_json(rows)
        return
    for r in rows:
        extra = f"  {r['se_blocks']:3d} SE" if "se_blocks" in r else ""
        print(f"{r['name']:28s} {r['family']:12s} {r['weights']:18s}{extra}  {r['paper_name']}")


def cmd_census(args: argparse.Namespace) -> None:
    """``models --all``: every timm and torchvision architecture with channel gates (built without weights, on
    the meta device, cached; see :func:`senet_viz.gates.census.gate_census`)."""
    from senet_viz.gates.census import gate_census

    names = [n.strip() for n in args.names.split(",") if n.strip()] if args.names else None
    if names is not None and not names:
        raise UserError("--names takes comma-separated architectures, e.g. timm:seresnet50,torchvision:regnet_y_400mf")
    bar = None
    if not args.json and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(desc="census", unit="architecture", file=sys.stderr, dynamic_ncols=True)

    def progress(i: int, n: int, name: str) -> None:
        bar.total = n
        bar.set_postfix_str(name[:40], refresh=False)
        bar.update(i - bar.n)

    try:
        census = gate_census(names, refresh=args.refresh, progress=progress if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print_json(census)
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


def cmd_blocks(args: argparse.Namespace) -> None:
    loaded = load_network(args, weights_needed=False)
    rows = [{"name": b.name, "path": b.path, "gate": b.gate_path, "stage": b.stage, "index": b.index,
             "channels": b.channels, "params": b.params, "gate_fn": b.gate_fn, "kind": b.kind,
             "gate_kind": b.gate_kind, "gain": b.gain} for b in loaded.blocks]
    if args.json:
        print_json(rows)
        return
    print(f"{loaded.name}: {len(rows)} SE blocks")
    for r in rows:
        kind = "" if r["gate_kind"] == "se" else f"  [{r['gate_kind']}]"
        print(f"{r['name']:8s} stage {r['stage']}  C={r['channels']:5d}  params={r['params']:9,d}  {r['path']}{kind}")


def cmd_cost(args: argparse.Namespace) -> None:
    from senet_viz.analysis.cost import model_cost

    loaded = load_network(args, weights_needed=False)
    removed = pick_blocks(loaded, args.ablate)
    report = model_cost(loaded.model, loaded.blocks, removed, loaded.input_size, loaded.name)
    out = report.to_dict() if args.per_block else report.summary()
    out["reduction"] = args.reduction or "default"
    if args.json:
        print_json(out)
        return
    print(f"{loaded.name} at {loaded.input_size[-1]}px: {report.params:,} parameters, {report.macs / 1e9:.3f} GMACs")
    print(f"SE blocks: {report.se_params:,} parameters ({report.se_params / report.params:.1%}), "
          f"{report.se_macs / 1e9:.4f} GMACs")
    if removed:
        print(f"without {', '.join(report.removed)}: {report.params_after:,} parameters "
              f"(-{report.params_removed:,}, -{report.params_removed / report.params:.2%}), "
              f"{report.macs_after / 1e9:.3f} GMACs")
    print(report.stages().to_string(index=False))
