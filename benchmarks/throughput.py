"""Does the input pipeline keep the model busy? Images per second of its parts and of the whole, in one run.

For each model, batch 32, all measured in the same run, in rotating order over ``--repeats`` rounds (medians):

- decode-only: the pipeline alone (decode, resize, crop, normalise; ``senet_viz.inference.run``'s decode threads, as
many as
  ``default_workers`` chooses), no network;
- forward-only: the network on pre-decoded input already on the device, with every SE gate captured (per-batch
  host copy), top-5 and logits copied back, at the same precision as the end-to-end pass: what the pipeline feeds;
- end-to-end: ``run_model`` with its defaults (decode threads, fast JPEG path, capture of every gate);
- ratio = end-to-end / forward-only (1 = decoding costs nothing), per round from the two measured back to back,
  median over the rounds. Targets on a 2-core CPU: >= 0.75 for MobileNetV3-Small, >= 0.95 for SE-ResNet-50;
- old pipeline: ``run_model`` with PIL decoding and the reference PIL transform on the calling thread
  (``num_workers=0``), as before issue 11, for comparison;
- workers: end-to-end with other decode-thread counts (``--workers-sweep``), to check the default.

    python benchmarks/throughput.py [--device cpu|cuda] [--repeats 3] [--resnet-images 128] [--json]

MobileNetV3-Small runs the shared .tflite weights on the 900 shared images; SE-ResNet-50 runs random weights
(``weights="random"``: no download; timing does not depend on the values) on the first ``--resnet-images``.
With ``--device cuda`` the image list is cycled ``--cycle`` times for a measurable run, and the time for 50,000
images through SE-ResNet-50 with capture is projected from the end-to-end rate (target: under 60 s).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from senet_viz.data.folders import folder_source
from senet_viz.data.sources import ImageSet
from senet_viz.gates.capture import capture
from senet_viz.inference.pipeline import Pipeline, default_workers, prefetch
from senet_viz.inference.precision import PrecisionPolicy
from senet_viz.inference.run import RunOptions, run_model
from senet_viz.models.download import local_weights_file
from senet_viz.models.loaded import LoadedModel
from senet_viz.models.zoo import load_model
from senet_viz.settings import usable_cores

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "data" / "imagenet-samples"
TARGETS = {"tf_mobilenetv3_small_100": 0.75, "legacy_seresnet50": 0.95}
GPU_IMAGES, GPU_TARGET_S = 50_000, 60.0


class _Reference:
    """The model's transform hidden behind a plain callable, so run_model takes the PIL path (the old pipeline)."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, image):
        return self.transform(image)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _load(name: str, device: str) -> LoadedModel:
    weights = None if name == "tf_mobilenetv3_small_100" and local_weights_file(name) else "random"
    return load_model(name, weights=weights, device=device)


def measure(loaded: LoadedModel, images: ImageSet, batch: int, repeats: int, sweep: list[int],
            device_decode: bool | None) -> dict:
    dev = loaded.device
    workers = default_workers(dev)
    pipeline = Pipeline(images.items, loaded.transform, dev, device_decode)
    batches = [list(range(s, min(s + batch, len(images.items)))) for s in range(0, len(images.items), batch)]
    inputs = [x for _, x, _ in map(pipeline.device_batch, prefetch(pipeline.host, batches, workers)) if x is not None]
    n = sum(len(x) for x in inputs)

    def decode_only() -> float:
        _sync(dev)
        t0, done = time.perf_counter(), 0
        for prepared in prefetch(pipeline.host, batches, workers):
            done += len(pipeline.device_batch(prepared)[0])
        _sync(dev)
        return done / (time.perf_counter() - t0)

    def forward_only() -> float:
        policy = PrecisionPolicy("auto", dev)
        _sync(dev)
        t0 = time.perf_counter()
        with capture(loaded.model, loaded.blocks, per_batch=True) as rec:
            for x in inputs:  # what run_model does per batch, without the pipeline
                logits = policy.forward(loaded.model, x, rec)
                p5, i5 = logits.softmax(dim=1).topk(5, dim=1)
                [t.to("cpu", non_blocking=True) for t in (i5, p5, logits)]
                rec.commit()
            _sync(dev)
        return n / (time.perf_counter() - t0)

    def end_to_end(num_workers: int | None = None) -> Callable[[], float]:
        def run() -> float:
            t0 = time.perf_counter()
            options = RunOptions(batch_size=batch, num_workers=num_workers, device_decode=device_decode)
            result = run_model(loaded, images, options=options)
            return result.n / (time.perf_counter() - t0)
        return run

    old_model = replace(loaded, transform=_Reference(loaded.transform))

    def old() -> float:
        t0 = time.perf_counter()
        result = run_model(old_model, images, options=RunOptions(batch_size=batch, num_workers=0, device_decode=False))
        return result.n / (time.perf_counter() - t0)

    kinds: dict[str, Callable[[], float]] = {"decode": decode_only, "forward": forward_only, "end_to_end": end_to_end(),
                                             "old": old}
    for w in sweep:
        if w != workers:
            kinds[f"workers_{w}"] = end_to_end(w)
    # warm-up: first calls build kernels (oneDNN, cuDNN) and fill the page cache
    small = replace(images, items=images.items[: 2 * batch])
    run_model(loaded, small, options=RunOptions(batch_size=batch, device_decode=device_decode))
    run_model(old_model, small, options=RunOptions(batch_size=batch, num_workers=0))
    forward_only()
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    others = [k for k in kinds if k not in ("forward", "end_to_end")]
    for r in range(repeats):
        # forward-only and end-to-end back to back (alternating which goes first), so that the ratio of each round
        # compares the two under the same machine load; the other measurements rotate around them.
        pair = ["forward", "end_to_end"] if r % 2 == 0 else ["end_to_end", "forward"]
        shift = r % len(others) if others else 0
        for k in pair + others[shift:] + others[:shift]:
            rates[k].append(kinds[k]())
    med = {k: statistics.median(v) for k, v in rates.items()}
    pairs = [e / f for e, f in zip(rates["end_to_end"], rates["forward"], strict=True)]
    out = {
        "model": loaded.name, "weights": loaded.weights_source, "images": n, "batch": batch, "workers": workers,
        "precision": PrecisionPolicy("auto", dev).name,
        **{f"{k}_img_s": round(v, 1) for k, v in med.items()},
        "ratio": round(statistics.median(pairs), 3),
        "ratio_of_medians": round(med["end_to_end"] / med["forward"], 3),
        "ratio_per_round": [round(p, 3) for p in pairs],
        "old_ratio": round(med["old"] / med["forward"], 3),
        "speedup_vs_old": round(med["end_to_end"] / med["old"], 2),
        "target": TARGETS.get(loaded.name),
        "rates": {k: [round(x, 1) for x in v] for k, v in rates.items()},
    }
    if dev.type == "cuda":
        out["projected_50k_s"] = round(GPU_IMAGES / med["end_to_end"], 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--models", default=",".join(TARGETS), help="comma-separated zoo names")
    parser.add_argument("--images", type=Path, default=IMAGES, help="a folder of images (default: the shared 900)")
    parser.add_argument("--resnet-images", type=int, default=128, help="images for the SE-ResNets on a CPU")
    parser.add_argument("--cycle", type=int, default=None, help="repeat the image list (default: 1 on CPU, 6 on CUDA)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=4, help="rounds of every measurement (medians are printed)")
    parser.add_argument("--workers-sweep", default="0,1,2,3", help="decode-thread counts also timed end to end")
    parser.add_argument("--device-decode", choices=("auto", "on", "off"), default="auto",
                        help="decode JPEGs on the model's device (auto: on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device_decode = {"auto": None, "on": True, "off": False}[args.device_decode]
    sweep = [int(w) for w in args.workers_sweep.split(",") if w.strip()]
    source = folder_source(args.images)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        loaded = _load(name, args.device)
        cuda = loaded.device.type == "cuda"
        items = source.items if cuda or "resnet" not in name else source.items[: args.resnet_images]
        items = items * (args.cycle or (6 if cuda else 1))
        images = replace(source, items=items, skipped=[])
        rows.append(measure(loaded, images, args.batch, args.repeats, sweep if "mobilenet" in name else [],
                            device_decode))
    env = {"torch": torch.__version__, "device": args.device, "threads": torch.get_num_threads(),
           "cores": usable_cores(),
           "cpu": platform.processor() or platform.machine(), "repeats": args.repeats}
    if torch.cuda.is_available() and args.device != "cpu":
        env["gpu"] = torch.cuda.get_device_name()
    if args.json:
        print(json.dumps({"env": env, "results": rows}, indent=2))
        return 0
    print(f"input pipeline throughput: device {args.device}{' (' + env['gpu'] + ')' if 'gpu' in env else ''}, "
          f"{env['cores']} cores, {env['threads']} torch threads, torch {env['torch']}, batch {args.batch}, "
          f"medians of {args.repeats} rounds (img/s)")
    print(f"{'model':26s} {'images':>6s} {'thr':>3s} {'prec':>4s} {'decode':>8s} {'forward':>8s} {'end2end':>8s} "
          f"{'ratio':>6s} {'target':>7s} {'old':>7s} {'old ratio':>9s} {'speedup':>7s}")
    for r in rows:
        target = r["target"]
        verdict = "" if target is None else (" ok" if r["ratio"] >= target else " BELOW")
        print(f"{r['model']:26s} {r['images']:6d} {r['workers']:3d} {r['precision']:>4s} {r['decode_img_s']:8.1f} "
              f"{r['forward_img_s']:8.1f} {r['end_to_end_img_s']:8.1f} {r['ratio']:6.3f} "
              f"{'>= ' + str(target) if target else '':>7s}{verdict:6s} {r['old_img_s']:7.1f} {r['old_ratio']:9.3f} "
              f"{r['speedup_vs_old']:6.2f}x")
    for r in rows:
        sweep_txt = ", ".join(f"{k.split('_')[1]} threads {v:.1f}" for k, v in r.items()
                              if k.startswith("workers_") and k.endswith("_img_s"))
        print(f"  {r['model']}: weights {r['weights']}; ratio per round {r['ratio_per_round']} "
              f"(ratio of the medians {r['ratio_of_medians']})"
              + (f"; end to end with {sweep_txt} (default {r['workers']}: {r['end_to_end_img_s']:.1f})"
                 if sweep_txt else ""))
        if "projected_50k_s" in r:
            ok = "ok" if r["projected_50k_s"] < GPU_TARGET_S else "ABOVE"
            print(f"  {r['model']}: {GPU_IMAGES:,} images end to end with capture in ~{r['projected_50k_s']:.0f} s "
                  f"(target < {GPU_TARGET_S:.0f} s for SE-ResNet-50: {ok})")
    print("ratio = median over rounds of end-to-end / forward-only img/s measured back to back (1: the pipeline "
          "costs the model nothing); old = PIL on the calling thread (num_workers=0), as before; speedup = "
          "end-to-end / old.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
