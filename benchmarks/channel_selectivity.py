"""Class selectivity per SE channel against depth: MobileNetV3-Small over the 900 shared ImageNet images.

For every SE block: Morcos et al.'s selectivity of each channel over class means (senet_viz.analysis.channels), its
median
and quartiles across the block's channels, the median of the per-channel eta2 where it is defined, and Spearman's
rho of the median against block position (permutation p-value). Three groupings of the same gates:

- ``labels``: the images' labels. The 900 shared images hold ONE image per class, so every "class mean" is a
  single image: selectivity then says how much one image stands out on a channel (a sparse channel scores high),
  not tuning to a class, and eta2 is undefined (no within-class spread).
- ``prediction``: the network's top-1 class (every predicted class, most of them one image too).
- ``prediction, n>=2``: only the predicted classes with at least two images (the others left out), so that class
  means average over images and eta2 is defined; few classes and few images, so read it as a rough check.

    python benchmarks/channel_selectivity.py [--images ../shared/data/imagenet-samples] [--json]
    python benchmarks/channel_selectivity.py --excitations gates.parquet   # from an `extract` file instead
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from senet_viz.analysis import channels
from senet_viz.analysis.stats import GateStats

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tf_mobilenetv3_small_100"
SAMPLES = ROOT.parent / "shared" / "data" / "imagenet-samples"


def _from_model(images: Path, device: str) -> tuple[dict[str, GateStats], int]:
    from senet_viz.cli.common import image_set  # the CLI's folder reading: labels from ImageNet-style file names
    from senet_viz.inference.run import RunOptions, run_model
    from senet_viz.models.zoo import load_model

    loaded = load_model(MODEL, device=device)
    args = argparse.Namespace(images=str(images), labels=None, devkit_meta=None, per_class=None, shard=None,
                              limit=None)
    folder = image_set(args, loaded)
    result = run_model(loaded, folder, options=RunOptions(keep_logits=False))
    by_label = GateStats.from_result(result, loaded.blocks, folder.class_names, by="labels", detail_classes=[])
    by_pred = GateStats.from_result(result, loaded.blocks, loaded.class_names, by="prediction", detail_classes=[])
    return {"labels": by_label, "prediction": by_pred}, result.n


def _from_extract(path: Path) -> tuple[dict[str, GateStats], int]:
    by_label = channels.stats_for_extract(path, by="labels")
    return {"labels": by_label, "prediction": channels.stats_for_extract(path, by="prediction")}, \
        by_label.n_images()


def _measure(stats: GateStats, classes: list[int] | None = None) -> tuple[pd.DataFrame, dict]:
    summary = channels.block_summary(stats, classes=classes)
    return summary, channels.depth_trend(summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=SAMPLES)
    parser.add_argument("--excitations", type=Path, help="an extract file of the same model instead of a pass")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    start = time.time()
    groups, n = _from_extract(args.excitations) if args.excitations else _from_model(args.images, args.device)
    by_pred = groups["prediction"]
    table = by_pred.class_table()
    multi = [int(k) for k, c in zip(table["class_index"], table["count"], strict=True) if k >= 0 and c >= 2]
    runs = {"labels": _measure(groups["labels"]), "prediction": _measure(by_pred),
            "prediction, n>=2": _measure(by_pred, multi)}
    report = {"model": MODEL, "n_images": n, "seconds": round(time.time() - start, 1), "groupings": {}}
    for name, (summary, trend) in runs.items():
        report["groupings"][name] = {
            "n_classes": int(summary["n_classes"].max()), "n_images": int(summary["n_images"].max()),
            "class_means_from": str(summary["class_means_from"].iloc[0]),
            "blocks": summary[["block", "channels", "selectivity_q25", "selectivity_median", "selectivity_q75",
                               "eta2_median"]].round(4).to_dict(orient="records"),
            "trend": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in trend.items()},
        }
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=float)
        sys.stdout.write("\n")
        return 0
    print(f"{MODEL}: {n} images ({report['seconds']} s)")
    for name, (summary, trend) in runs.items():
        info = report["groupings"][name]
        print(f"\n== grouped by {name}: {info['n_classes']} classes, {info['n_images']} images; class means from "
              f"{info['class_means_from']}")
        if info["class_means_from"] == "single images":
            print("   (every class is one image: a class mean is a single image, eta2 undefined)")
        cols = ["block", "channels", "selectivity_q25", "selectivity_median", "selectivity_q75", "eta2_median"]
        print(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print(f"Spearman rho (median vs depth) = {trend['rho']:.3f}, permutation p = {trend['p_value']:.4f} "
              f"({trend['n_blocks']} blocks): {trend['verdict']}")
        if trend["left_out"]:
            print(f"   {channels.left_out_text(trend)}")
        if np.isfinite(trend["rho"]) and summary["eta2_median"].notna().all():
            eta = channels.depth_trend(summary, "eta2_median")
            print(f"eta2 median vs depth: rho = {eta['rho']:.3f}, p = {eta['p_value']:.4f}: {eta['verdict']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
