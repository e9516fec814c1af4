"""What a rerun spends keying the images: the sidebar's path (``folder_source(folder, ...)`` then ``images_key`` on the
new ImageSet) over a watched folder (:mod:`senet_viz.data.watch`: its files' stamps remembered until an event)
against a stat of every file (watching unavailable), in one run. Prints median milliseconds and the ratio.

    python benchmarks/image_stamps.py [--folder ../shared/data/imagenet-samples] [--repeats 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from senet_viz.data import watch
from senet_viz.data.folders import folder_source
from ui.keys import images_key

SAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "imagenet-samples"


def median_ms(folder: Path, repeats: int) -> tuple[float, float, int]:
    """(median ms of folder_source + images_key, median ms of images_key alone, files)."""
    both, key_only = [], []
    images = folder_source(folder)
    images_key(images)  # the first call lists the folder and, when watched, stats every file once
    for _ in range(repeats):
        start = time.perf_counter()
        images = folder_source(folder)
        mid = time.perf_counter()
        images_key(images)
        end = time.perf_counter()
        both.append(end - start)
        key_only.append(end - mid)
    return statistics.median(both) * 1e3, statistics.median(key_only) * 1e3, len(images.items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=SAMPLES)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    watch.reset()
    watched = median_ms(args.folder, args.repeats)
    if str(args.folder) not in watch.watched_roots():
        print("note: the folder could not be watched: both runs stat every file")
    watch.reset()
    sys.modules["watchdog.observers"] = None  # type: ignore[assignment]  # as without watchdog: stat every file
    plain = median_ms(args.folder, args.repeats)
    del sys.modules["watchdog.observers"]
    watch.reset()
    print(f"{watched[2]} files in {args.folder}")
    print(f"stat every file: folder_source + images_key {plain[0]:.2f} ms (images_key {plain[1]:.2f} ms)")
    print(f"watched folder:  folder_source + images_key {watched[0]:.2f} ms (images_key {watched[1]:.2f} ms)")
    print(f"ratio watched / stat every file: {watched[0] / plain[0]:.2f} "
          f"(images_key alone {watched[1] / plain[1]:.2f})")


if __name__ == "__main__":
    main()
