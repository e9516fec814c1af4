"""Measured time per image with and without SE (issue 22): MobileNetV3-Small (the shared TFLite weights) and
SE-ResNet-50 (timm legacy_seresnet50, random weights: timing does not depend on them), as Markdown tables.

    .venv/bin/python benchmarks/latency.py [--models tf_mobilenetv3_small_100,legacy_seresnet50] [--rounds 7]
        [--threads 1,all] [--batch 1,32] [--json-dir DIR]

Per setting (CPU threads x batch; CUDA batch 1 and 256 in fp32 and bf16 when present) and variant: the median time
per image and its interquartile range over interleaved rounds, the time relative to the full network, the share of
the full network's time and MACs the variant saves, and the ratio of the two shares. The load average before and
after is printed: on a shared machine the times spread, and the ratios within one setting are the result.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SHARED_TFLITE = Path(__file__).resolve().parents[2] / "shared" / "models" / "mobilenet_v3_small_224_1.0_uint8.tflite"


def markdown(report) -> str:
    lines = [f"**{report.model}** ({'x'.join(map(str, report.input_size))}), removed set "
             f"{', '.join(report.removed)}; {report.conditions['cpu_count']} cores, load average "
             f"{report.conditions['load_average_before'][0]:.2f} before / "
             f"{report.conditions['load_average_after'][0]:.2f} after; {report.conditions['seconds']} s",
             "", "| setting | variant | ms / image | IQR | × full | time saved | MACs saved | time / MACs |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report.table.itertuples(index=False):
        ratio = "" if r.time_share_per_mac_share != r.time_share_per_mac_share else f"{r.time_share_per_mac_share:.1f}"
        lines.append(f"| {r.setting} | {r.variant} | {r.ms_per_image:.3f} | {r.iqr_ms:.3f} | {r.time_vs_full:.3f} | "
                     f"{r.time_saved_share:.2%} | {r.mac_saved_share:.3%} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tf_mobilenetv3_small_100,legacy_seresnet50")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", default="1,all")
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--json-dir", type=Path)
    args = parser.parse_args()

    from senet_viz.analysis.latency import cpu_count, latency_report, paper_table2, plan_settings
    from senet_viz.models.zoo import load_model

    threads = [cpu_count() if t == "all" else int(t) for t in args.threads.split(",")]
    settings = plan_settings(threads=threads, batches=[int(b) for b in args.batch.split(",")])
    for name in args.models.split(","):
        weights = str(SHARED_TFLITE) if name == "tf_mobilenetv3_small_100" and SHARED_TFLITE.is_file() else "random"
        loaded = load_model(name, weights=weights, device="cpu")
        report = latency_report(loaded, settings=settings, rounds=args.rounds)
        print(markdown(report) + "\n")
        if args.json_dir:
            args.json_dir.mkdir(parents=True, exist_ok=True)
            (args.json_dir / f"latency_{name}.json").write_text(json.dumps(report.to_dict(), indent=1, default=str))
    for r in paper_table2().itertuples(index=False):
        print(f"paper: {r.measure}: {r[1]:.0f} vs {r[2]:.0f} ms; time saved {r.time_saved_share:.2%}, MACs saved "
              f"{r.mac_saved_share:.2%}, time / MACs {r.time_share_per_mac_share:.1f}")


if __name__ == "__main__":
    main()
