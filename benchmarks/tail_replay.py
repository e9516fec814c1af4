"""Tail replay (senet_viz.inference.tail) against the full ablated pass, measured in one run.

(a) SE-ResNet-50 shapes (timm ``legacy_seresnet50``, random weights, 64 random 224 px images): removing stage 5 by
    replaying the tail from the activation at the cut, against the full ablated forward (target <= 30%).
(b) MobileNetV3-Small (the zoo's ``tf_mobilenetv3_small_100``, weights from the shared TFLite file) on the shared
    ImageNet samples: remove stage 5 (identity and mean) from the activations the full pass kept, against replay
    off (target <= 40%); a sweep of the last-k and stage configurations and a sweep of the last stage's
    configurations, replay on vs off (target: the last-stage sweep >= 2x faster), each beside the time its tails'
    MAC shares predict (target: within 1.3x).

Removals are timed three times each (off, on, off, on, ...) and the fastest run kept; sweeps once.

    .venv/bin/python benchmarks/tail_replay.py [--images N] [--skip-resnet] [--skip-sweeps]

Prints the machine load (os.getloadavg) before and after: on a shared machine, compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from senet_viz.analysis import ablation
from senet_viz.data.folders import folder_source
from senet_viz.gates.blocks import select_blocks
from senet_viz.gates.capture import ablate
from senet_viz.inference.pipeline import PixelCache
from senet_viz.inference.precision import PrecisionPolicy
from senet_viz.inference.run import RunOptions, run_model
from senet_viz.inference.tail import find_cuts
from senet_viz.models.loaded import LoadedModel

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def best_of(off, on, runs: int = 3):
    """(off time, on time, off result, on result), each the fastest of ``runs`` runs in the order off, on, off, on,
    ...: on a shared machine the minimum is the least disturbed measurement."""
    t_off, r_off = timed(off)
    t_on, r_on = timed(on)
    for _ in range(runs - 1):
        t_off = min(t_off, timed(off)[0])
        t_on = min(t_on, timed(on)[0])
    return t_off, t_on, r_off, r_on


def resnet50(n: int, batch: int) -> None:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("legacy_seresnet50").eval()
    loaded = LoadedModel.from_module(model, "legacy_seresnet50", [f"c{i}" for i in range(1000)])
    t_plan, plan = timed(lambda: find_cuts(loaded))
    stage5 = select_blocks(loaded.blocks, "stage:5")
    cut = plan.cut_before(stage5)
    print(f"(a) legacy_seresnet50, random weights, {n} images of 224 px, batch {batch}; plan {t_plan:.1f} s: "
          f"{plan.note(stage5)}")
    policy = PrecisionPolicy("fp32", loaded.device)
    xs = [torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(i)) for i in range(n // batch)]
    tapped = plan.tapped([cut])
    with torch.inference_mode():
        acts = []
        for x in xs:  # the full pass every page runs anyway, keeping the activation at the cut
            policy.forward(tapped, x)
            acts.append(tapped.taps[0])

        def full_ablated():
            with ablate(model, stage5):
                return [policy.forward(model, x) for x in xs]

        def replayed():
            with ablate(model, stage5):
                return [policy.forward(plan.tail(cut), a) for a in acts]

        t_full, t_tail, want, got = best_of(full_ablated, replayed, 2)
    same = all(torch.equal(a.argmax(1), b.argmax(1)) for a, b in zip(want, got, strict=True))
    print(f"    remove stage 5: full ablated pass {t_full:.2f} s, tail replay {t_tail:.2f} s = "
          f"{100 * t_tail / t_full:.0f}% (MAC share {100 * cut.tail_share:.0f}%; target <= 30%); "
          f"same top-1: {same}; {load()}")


def mobilenet(n_images: int, sweeps: bool = True) -> None:
    from senet_viz.models.zoo import load_model

    loaded = load_model("tf_mobilenetv3_small_100", device="cpu")
    every = folder_source(SAMPLES)
    images = replace(every, items=every.items[:n_images]) if n_images < len(every.items) else every
    n = len(images.items)
    t_plan, plan = timed(lambda: find_cuts(loaded))
    stage5 = select_blocks(loaded.blocks, "stage:5")
    print(f"(b) {loaded.name} on {n} shared images; plan {t_plan:.1f} s; {plan.note(stage5)}; {load()}")
    pixels = PixelCache()  # as the app: one cache of model-ready pixels shared by the passes of a request
    t_first, full = timed(lambda: run_model(loaded, images, options=RunOptions(keep_cuts=True),
                                            pixel_cache=pixels))
    kept = full.cuts.nbytes / 2**20 if full.cuts is not None else 0
    print(f"    first (full) pass keeping the last stage's activations: {t_first:.1f} s, {kept:.1f} MiB kept "
          f"{full.cuts_note or ''}")
    for mode in ("identity", "mean"):
        t_off, t_on, off, on = best_of(
            lambda m=mode: ablation.evaluate(loaded, images, stage5, m, full=full, replay=False, pixel_cache=pixels),
            lambda m=mode: ablation.evaluate(loaded, images, stage5, m, full=full, replay=True, pixel_cache=pixels))
        same = (on.top1, on.top5, on.agreement) == (off.top1, off.top5, off.agreement)
        print(f"    remove stage 5 ({mode}): replay off {t_off:.2f} s, on {t_on:.2f} s = {100 * t_on / t_off:.0f}% "
              f"(target <= 40%); same metrics: {same}; {on.replay}")
    if not sweeps:
        return
    configs = ablation.sweep_configs(loaded.blocks)
    last = max(b.stage for b in loaded.blocks)
    n_last = sum(b.stage == last for b in loaded.blocks)
    sweeps = {
        "last-k and stage": [c for c in configs if c[0] in ("last", "stage")],
        "last stage": [c for c in configs if (c[0] == "block" and c[2][0].stage == last)
                       or c[1] == f"stage {last}" or (c[0] == "last" and len(c[2]) <= n_last)],
    }
    # The cost of the full pass alone (decode and the network once), to split a sweep's time into its parts.
    t_pass, _ = timed(lambda: run_model(loaded, images, options=RunOptions(keep_gates=False, keep_logits=False)))
    for name, chosen in sweeps.items():
        t_off, off = timed(lambda c=chosen: ablation.sweep(loaded, images, ("identity",), c, replay=False))
        t_on, on = timed(lambda c=chosen: ablation.sweep(loaded, images, ("identity",), c, replay=True))
        shares = [plan.cut_before(blocks).tail_share if plan.cut_before(blocks) else 1.0 for _, _, blocks in chosen]
        per_forward = (t_off - t_pass) / len(chosen)  # one configuration's whole-network forward over the images
        predicted = t_pass + per_forward * sum(shares)
        same = (on.drop(columns="replay").fillna(-1).values == off.drop(columns="replay").fillna(-1).values).all()
        print(f"    sweep '{name}' ({len(chosen)} configurations, identity): off {t_off:.1f} s, on {t_on:.1f} s = "
              f"{t_off / t_on:.2f}x faster; MAC shares predict {predicted:.1f} s (measured / predicted "
              f"{t_on / predicted:.2f}, target <= 1.3); full pass alone {t_pass:.1f} s; rows equal: {same}; {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=900, help="shared images for (b) (default all 900)")
    parser.add_argument("--resnet-images", type=int, default=64)
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--skip-sweeps", action="store_true")
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}, {load()}")
    if not args.skip_resnet:
        resnet50(args.resnet_images, 32)
    mobilenet(args.images, not args.skip_sweeps)


if __name__ == "__main__":
    main()
