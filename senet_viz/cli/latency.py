"""``latency``: measured wall time per image with and without SE blocks, beside their MAC share and the paper's
timings (:mod:`senet_viz.analysis.latency`)."""

from __future__ import annotations

import argparse

from senet_viz.cli.common import UserError, load_network, pick_blocks, print_json


def _ints(text: str | None, flag: str, allow_all: bool = False) -> list[int] | None:
    """``1,32`` as [1, 32]; ``all`` (with ``allow_all``) is every core."""
    if text is None:
        return None
    from senet_viz.analysis.latency import cpu_count

    values = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        if allow_all and item.lower() == "all":
            values.append(cpu_count())
            continue
        try:
            values.append(int(item))
        except ValueError as exc:
            raise UserError(f"{flag} takes comma-separated positive integers{' or all' if allow_all else ''}, "
                            f"got {text!r}") from exc
    if not values or min(values) < 1:
        raise UserError(f"{flag} takes comma-separated positive integers, got {text!r}")
    return values


def add_latency(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_latency)
    p.add_argument("--remove", help="the removed set: SE_5_1,SE_5_2 | stage:5 | last:3 (default: the last stage)")
    p.add_argument("--threads", default="1,all", help="CPU thread counts, e.g. 1,all (default) or 1,4")
    p.add_argument("--batch", default="1,32", help="CPU batch sizes (default 1,32)")
    p.add_argument("--cuda-batch", default="1,256", help="CUDA batch sizes (default 1,256), fp32 and bf16")
    p.add_argument("--variants", help="which networks to time (default all): full, hooked_all, slim_all, "
                                      "hooked_removed, slim_removed")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds; medians and IQRs are over these")
    p.add_argument("--block-seconds", type=float, default=0.2,
                   help="about how long one block of forwards of the full network lasts (default 0.2)")


def cmd_latency(args: argparse.Namespace) -> None:
    import torch

    from senet_viz.analysis.latency import VARIANTS, last_stage, latency_report, paper_table2, plan_settings

    if args.rounds < 1 or args.block_seconds <= 0:
        raise UserError("--rounds takes a positive integer and --block-seconds a positive number")
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device here")
    threads = _ints(args.threads, "--threads", allow_all=True)
    batches = _ints(args.batch, "--batch")
    cuda_batches = _ints(args.cuda_batch, "--cuda-batch")
    keys = tuple(s.strip() for s in args.variants.split(",")) if args.variants else VARIANTS
    unknown = [k for k in keys if k not in VARIANTS]
    if unknown:
        raise UserError(f"unknown --variants {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    args.device = "cpu"  # the copies move to CUDA for the CUDA settings only
    loaded = load_network(args, weights_needed=False)
    removed = pick_blocks(loaded, args.remove) if args.remove else last_stage(loaded.blocks)
    settings = plan_settings(cpu=device != "cuda", cuda=None if device == "auto" else device == "cuda",
                             threads=threads, batches=batches, cuda_batches=cuda_batches)
    report = latency_report(loaded, removed, settings=settings, keys=keys, rounds=args.rounds,
                            block_s=args.block_seconds)
    if args.json:
        out = report.to_dict()
        out["weights"] = loaded.weights_source
        print_json(out)
        return
    table = report.table
    print(f"{loaded.name} ({loaded.weights_source}) at {'x'.join(map(str, report.input_size))}: removed set "
          f"{', '.join(report.removed) or '(none)'}; {report.conditions['cpu_count']} cores, load average "
          f"{_load(report.conditions['load_average_before'])} before, {_load(report.conditions['load_average_after'])} "
          f"after, {report.conditions['seconds']} s")
    for v in report.variants:
        print(f"  {v['key']:15s} {v['params']:>12,d} params  {v['macs'] / 1e9:8.4f} GMACs  {v['label']}")
    for setting, rows in table.groupby("setting", sort=False):
        rounds, number = int(rows["rounds"].iloc[0]), int(rows["forwards_per_round"].iloc[0])
        print(f"\n{setting}  (medians of {rounds} rounds of {number} forwards)")
        print(f"  {'variant':15s} {'ms/image':>10s} {'IQR':>8s} {'vs full':>8s} {'time saved':>11s} "
              f"{'MACs saved':>11s} {'time/MACs':>10s}")
        for r in rows.itertuples(index=False):
            share = r.time_share_per_mac_share
            ratio = "" if share != share else f"{share:10.1f}"  # NaN: the variant saves no MAC
            print(f"  {r.variant:15s} {r.ms_per_image:10.3f} {r.iqr_ms:8.3f} {r.time_vs_full:8.3f} "
                  f"{r.time_saved_share:11.2%} {r.mac_saved_share:11.3%} {ratio:>10s}")
    print("\nThe paper (Hu et al., TPAMI 2019), ResNet-50 vs SE-ResNet-50:")
    for r in paper_table2().itertuples(index=False):
        print(f"  {r.measure}: {r[1]:.0f} vs {r[2]:.0f}; SE saves {r.time_saved_share:.2%} of the time for "
              f"{r.mac_saved_share:.2%} of the multiply-adds: time/MACs {r.time_share_per_mac_share:.1f}")
    for note in report.notes:
        print(f"note: {note}")


def _load(value: tuple | None) -> str:
    return "n/a" if not value else f"{value[0]:.2f}"
