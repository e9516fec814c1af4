"""Overhead of recording every SE gate: hooked vs plain forward, batch 32 at 224x224.

For each model, plain (``torch.inference_mode``) and hooked (``senet_viz.gates.capture.capture`` over all SE blocks,
gates copied to float16 CPU arrays) forwards are interleaved - plain, hooked, hooked, plain, plain, hooked,
... (ABBA) - after a few warm-up pairs, so drifts in machine load hit both alike. Each hooked repeat is one
whole ``with capture`` scope (lock, hook registration, forward, hook removal), i.e. the per-batch cost as the
runner pays it, or more. Prints the median times and the ratio hooked / plain, to compare with the target (<= 1.03).

    python benchmarks/capture_overhead.py [--repeats 10] [--warmup 2] [--threads N] [--device cpu|cuda]

MobileNetV3-Small uses the shared .tflite weights when ../shared has them (random weights otherwise);
SE-ResNet-50 runs with random weights (timing does not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from senet_viz.gates.capture import GateRecorder, capture, hook_count
from senet_viz.models.download import local_weights_file
from senet_viz.models.loaded import LoadedModel
from senet_viz.models.zoo import load_model

TARGET = 1.03
MODELS = ("tf_mobilenetv3_small_100", "legacy_seresnet50")


def _load(name: str, device: str) -> LoadedModel:
    weights = None if name == "tf_mobilenetv3_small_100" and local_weights_file(name) else "random"
    return load_model(name, weights=weights, device=device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _TimedRecorder:
    """Adds up the time spent inside the recording hooks (detach, float16, copy to CPU numpy): the work that
    capture adds to a forward, measured on its own so that it stays readable when machine load is noisy."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._original = GateRecorder._record

    def __enter__(self) -> _TimedRecorder:
        original = self._original

        def timed(recorder, name, gate):
            t0 = time.perf_counter()
            original(recorder, name, gate)
            self.seconds += time.perf_counter() - t0

        GateRecorder._record = timed
        return self

    def __exit__(self, *exc) -> None:
        GateRecorder._record = self._original


def measure(loaded: LoadedModel, batch: int, size: int, repeats: int, warmup: int) -> dict:
    model, blocks, device = loaded.model, loaded.blocks, loaded.device
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    plain_s: list[float] = []
    hooked_s: list[float] = []
    record_s: list[float] = []
    n_gates = 0

    def plain() -> float:
        _sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(x)
        _sync(device)
        return time.perf_counter() - t0

    def hooked() -> float:
        nonlocal n_gates
        with _TimedRecorder() as timer:
            _sync(device)
            t0 = time.perf_counter()
            with capture(model, blocks) as rec:
                model(x)
            _sync(device)  # the gates are already on the CPU; this only closes the timing window
            elapsed = time.perf_counter() - t0
        record_s.append(timer.seconds)
        n_gates = sum(g.shape[0] * g.shape[1] for g in rec.gates.values())
        return elapsed

    for i in range(warmup + repeats):
        # ABBA order (plain first in even pairs, hooked first in odd ones) cancels a linear drift of machine load
        if i % 2 == 0:
            p, h = plain(), hooked()
        else:
            h, p = hooked(), plain()
        if i >= warmup:
            plain_s.append(p)
            hooked_s.append(h)
    assert hook_count(model) == 0, "capture left a hook behind"
    plain, hooked = statistics.median(plain_s), statistics.median(hooked_s)
    return {
        "model": loaded.name,
        "weights": loaded.weights_source,
        "blocks": len(blocks),
        "gates_per_batch": n_gates,
        "plain_ms": round(plain * 1e3, 2),
        "hooked_ms": round(hooked * 1e3, 2),
        "plain_min_ms": round(min(plain_s) * 1e3, 2),
        "hooked_min_ms": round(min(hooked_s) * 1e3, 2),
        "record_ms": round(statistics.median(record_s[warmup:]) * 1e3, 3),
        "ratio": round(hooked / plain, 4),
        "record_share": round(statistics.median(record_s[warmup:]) / plain, 5),
        "ratio_of_minima": round(min(hooked_s) / min(plain_s), 4),
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="timed pairs per model (after the warm-ups)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed pairs per model")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo names")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        loaded = _load(name, args.device)
        rows.append(measure(loaded, args.batch, args.size, args.repeats, args.warmup))
    env = {"torch": torch.__version__, "device": args.device, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "batch": args.batch, "size": args.size,
           "target_ratio": TARGET}
    if torch.cuda.is_available() and args.device != "cpu":
        env["gpu"] = torch.cuda.get_device_name()
    if args.json:
        print(json.dumps({"env": env, "results": rows}, indent=2))
        return 0
    print(f"capture overhead: batch {args.batch} x 3 x {args.size} x {args.size}, device {args.device}, "
          f"{env['threads']} threads, torch {env['torch']}, {args.repeats} interleaved repeats after "
          f"{args.warmup} warm-ups (medians)")
    print(f"{'model':26s} {'SE':>3s} {'plain ms':>10s} {'hooked ms':>10s} {'ratio':>7s} {'min ratio':>9s} "
          f"{'in hooks ms':>11s} {'1 + hooks/plain':>15s}  target")
    for r in rows:
        verdict = "ok" if r["ratio"] <= TARGET else "ABOVE"
        print(f"{r['model']:26s} {r['blocks']:3d} {r['plain_ms']:10.1f} {r['hooked_ms']:10.1f} {r['ratio']:7.3f} "
              f"{r['ratio_of_minima']:9.3f} {r['record_ms']:11.2f} {1 + r['record_share']:15.4f}  <= {TARGET} "
              f"{verdict}")
    for r in rows:
        print(f"  {r['model']}: weights {r['weights']}; {r['gates_per_batch']:,} gates recorded per batch")
    print("ratio = median hooked / median plain; 'in hooks' = median time inside the recording hooks per batch "
          "(a load-robust estimate of the added work). Ratios below 1 mean machine noise exceeds the overhead.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
