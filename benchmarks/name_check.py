"""What refusing a typed model name without gates costs: the old path (build the network for real, then look for
gates with a forward pass) against the check on PyTorch's meta device (:func:`senet_viz.models.zoo.check_architecture`),
each in a fresh process, in one run. Prints seconds and peak RSS above the process's start, and the ratios.

    python benchmarks/name_check.py [--name vit_giant_patch14_224]

No weights are read or downloaded: both paths build the architecture only (the old one with random weights).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, resource, sys, time
from senet_viz.gates.blocks import discover
from senet_viz.models import zoo
from senet_viz.models.loaded import NoGatesError
from senet_viz.models.registry import get_spec

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

name, path = sys.argv[1], sys.argv[2]
spec = get_spec(name)
base = rss_mb()
start = time.perf_counter()
if path == "build":
    model, found = discover(spec.build(), spec.input_size)
    outcome = f"{len(found.blocks)} gates"
else:
    try:
        zoo.check_architecture(name, max_bytes=4096 << 20)
        outcome = "passed"
    except NoGatesError:
        outcome = "refused: no gates"
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"outcome": outcome, "seconds": seconds, "peak_mb": peak - base}))
"""


def measure(name: str, path: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, name, path], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{path}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="vit_giant_patch14_224", help="a timm / torchvision name without gates")
    args = parser.parse_args()
    old, new = measure(args.name, "build"), measure(args.name, "meta")
    for label, row in (("built for real + forward", old), ("meta-device check", new)):
        print(f"{label:26s} {row['outcome']:20s} {row['seconds']:8.2f} s  peak +{row['peak_mb']:,.0f} MB")
    print(f"ratio old/new: time {old['seconds'] / max(new['seconds'], 1e-9):.1f}x, "
          f"memory {old['peak_mb'] / max(new['peak_mb'], 1):.1f}x")


if __name__ == "__main__":
    main()
