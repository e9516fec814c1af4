"""Issue 20's evidence: every index beside its chance level and interval, the verdict and the selectivity trend,
for the embedded SE-ResNet on its 300 samples and MobileNetV3-Small (../shared .tflite) on the 900 shared ImageNet
images, by labels and by predicted class (circular: printed for comparison only).

    python benchmarks/claims_evidence.py [embedded] [mnv3]
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pandas as pd

import senet_viz as sv
from senet_viz.analysis import channels
from senet_viz.analysis.chance import INDICES, chance_table
from senet_viz.analysis.verdict import paper_verdict

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def report(net: sv.LoadedModel, images, by: str = "labels") -> None:
    result = sv.run_model(net, images, options=sv.RunOptions(batch_size=64))
    names = images.class_names if by == "labels" else net.class_names
    stats = sv.GateStats.from_result(result, net.blocks, names, by=by)
    labels = result.labels if by == "labels" else result.pred
    table = chance_table(result.gates, labels, blocks=[b.name for b in net.blocks])
    print(f"\n=== {net.name} on {result.n} images, classes by {by}"
          + (" (circular: the network's own output defines the classes)" if by != "labels" else ""))
    print(table[["block", "n_images", "n_classes", "cannot_tell"]].to_string(index=False))
    for index in INDICES:
        cols = [index, f"{index}_chance", f"{index}_null_lo", f"{index}_null_hi", f"{index}_p", f"{index}_ci_lo",
                f"{index}_ci_hi"]
        print(f"\n{index}\n" + table[["block", *cols]].round(4).to_string(index=False))
    verdict = paper_verdict(stats, chance=table)
    print("\nverdict:", verdict.summary)
    for claim in verdict.claims:
        print(f"- {claim.paper}: {claim.status} ({claim.detail})")
    trend = channels.depth_trend(channels.block_summary(stats), chance=table)
    print("\nselectivity trend:", {k: trend[k] for k in ("rho", "p_value", "n_blocks", "verdict", "left_out")})


def main(which: list[str]) -> None:
    warnings.simplefilter("ignore")
    pd.set_option("display.width", 250)
    if "embedded" in which:
        net = sv.load_model("se_resnet_fmnist")
        report(net, sv.folder_source(ROOT / "assets" / "fmnist_samples", class_names=net.class_names))
    if "mnv3" in which:
        net = sv.load_model("tf_mobilenetv3_small_100",
                            weights=str(SHARED / "models" / "mobilenet_v3_small_224_1.0_uint8.tflite"))
        images = sv.folder_source(SHARED / "data" / "imagenet-samples", class_names=net.class_names)
        report(net, images)
        report(net, images, by="prediction")


if __name__ == "__main__":
    main(sys.argv[1:] or ["embedded", "mnv3"])
