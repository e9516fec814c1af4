"""Chance table at real shapes: SE-ResNet-50's 16 SE blocks (256 x3, 512 x4, 1024 x6, 2048 x3 = 15,104 gates per
image), 5,000 images as 1,000 classes x 5 and as 100 classes x 50, float32 gates (a weak class effect that grows
with depth, plus noise). Each case runs in a fresh child process, so the peak RSS it reports
(``resource.getrusage``) is its own; ``gates`` is the RSS once the synthetic gates are made (what the caller holds),
``peak`` the peak over the whole call, ``added`` the difference (the chance engine's own peak).

    python benchmarks/chance_scale.py [--cases 1000x5,100x50] [--max-images 1000] [--permutations N]
        [--bootstrap N]   (default: ChanceOptions' permutations and bootstrap)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SHAPES = ((2, 3, 256), (3, 4, 512), (4, 6, 1024), (5, 3, 2048))
BLOCKS = [(f"SE_{s}_{i}", c) for s, n, c in SHAPES for i in range(1, n + 1)]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(classes: int, images: int, max_images: int | None, permutations: int, bootstrap: int) -> dict:
    import numpy as np

    from senet_viz.analysis.chance import ChanceOptions, chance_table

    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(classes), images))
    gates = {}
    for order, (name, c) in enumerate(BLOCKS):
        tuning = rng.normal(0, 0.02 * order / len(BLOCKS), (classes, c)).astype(np.float32)
        g = rng.random((len(labels), c), dtype=np.float32)
        g += tuning[labels]
        gates[name] = np.clip(g, 0, 1)
    base = _rss_mb()
    options = ChanceOptions(permutations=permutations, bootstrap=bootstrap, max_images=max_images)
    wall, cpu = time.perf_counter(), time.process_time()
    table = chance_table(gates, labels, options=options)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = _rss_mb()
    return {"case": f"{classes}x{images}", "max_images": max_images, "n_images": int(table["n_images"].iloc[0]),
            "permutations": permutations, "bootstrap": bootstrap, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "gates_mb": round(base), "peak_mb": round(peak), "added_mb": round(peak - base),
            "eta2_above_chance": int(table["eta2_above_chance"].sum())}


def _defaults():
    from senet_viz.analysis.chance import ChanceOptions

    return ChanceOptions()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="1000x5,100x50")
    parser.add_argument("--max-images", type=int, default=1000)
    defaults = _defaults()
    parser.add_argument("--permutations", type=int, default=defaults.permutations)
    parser.add_argument("--bootstrap", type=int, default=defaults.bootstrap)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(**json.loads(args.child))))
        return
    for case in args.cases.split(","):
        classes, images = (int(v) for v in case.split("x"))
        for max_images in (None, args.max_images):
            spec = {"classes": classes, "images": images, "max_images": max_images,
                    "permutations": args.permutations, "bootstrap": args.bootstrap}
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                 text=True, check=True)
            print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
