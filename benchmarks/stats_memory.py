"""Peak memory of streaming gate statistics for 10k and 100k synthetic gate vectors.

Each size runs in a fresh child process (so peaks do not mix) that feeds GateStats batches of 256 gate
vectors of an SE-ResNet-50-like block set and reports its peak resident memory. Streaming means the peak
should not grow with the number of images: target ratio peak(100k) / peak(10k) <= 1.1.

    python benchmarks/stats_memory.py [--classes 10] [--bins 50]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Channels of SE-ResNet-50's blocks, one per stage (2..5): the largest per stage.
BLOCKS = [{"name": f"SE_{s}_1", "stage": s, "channels": c} for s, c in ((2, 256), (3, 512), (4, 1024), (5, 2048))]


def child(n: int, classes: int, bins: int) -> None:
    import numpy as np

    from senet_viz.analysis.stats import GateStats

    stats = GateStats.for_blocks("synthetic", BLOCKS, [f"class{k}" for k in range(classes)], bins=bins)
    rng = np.random.default_rng(0)
    batch = 256
    for start in range(0, n, batch):
        m = min(batch, n - start)
        labels = rng.integers(0, classes, size=m)
        for b in BLOCKS:
            stats.update(b["name"], rng.uniform(size=(m, b["channels"])).astype(np.float16), labels)
    indices = stats.indices()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": n, "peak_mb": peak_kb / 1024, "images_seen": int(indices["n_images"].iloc[0])}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--bins", type=int, default=50)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.classes, args.bins)
        return
    results = {}
    for n in (10_000, 100_000):
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--classes", str(args.classes),
                              "--bins", str(args.bins)], check=True, capture_output=True, text=True).stdout
        results[n] = json.loads(out.strip().splitlines()[-1])
        assert results[n]["images_seen"] == n
        print(f"{n:>7,d} gate vectors ({sum(b['channels'] for b in BLOCKS)} channels, {args.classes} classes, "
              f"{args.bins} bins): peak RSS {results[n]['peak_mb']:.1f} MB")
    ratio = results[100_000]["peak_mb"] / results[10_000]["peak_mb"]
    print(f"ratio peak(100k) / peak(10k) = {ratio:.3f}  (target <= 1.1) -> {'OK' if ratio <= 1.1 else 'MISSED'}")


if __name__ == "__main__":
    main()
