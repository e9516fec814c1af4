"""Resident memory over repeated reruns of the Compare classes page (AppTest, in this process).

One AppTest session on app.py with the embedded model (se_resnet_fmnist) and its embedded samples, on the
default page (Compare classes). The page is rerun ``--runs`` times with the same inputs; by default every rerun
also flips a chart-only widget (the Fig. 6 channel-sampling seed between 0 and 1), so the figure is rebuilt
while the network result and the statistics come from the shared result cache. Resident memory (VmRSS from
/proc/self/status, after a gc) is printed after run 1, 10 and the last; flat memory means a last/first ratio
close to 1 (target <= 1.05 after the first run's one-off allocations).

    python benchmarks/rerun_memory.py [--runs 100] [--no-toggle] [--every 50]
"""

from __future__ import annotations

import argparse
import gc
import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "se_resnet_fmnist"


def rss_mb() -> float:
    """Current resident set size of this process in MB (VmRSS), or the peak where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux (a peak, not current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--no-toggle", action="store_true", help="rerun without touching any widget")
    parser.add_argument("--every", type=int, default=0, help="also print RSS every N reruns")
    args = parser.parse_args()

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    at.selectbox(key="model_name").set_value(MODEL)
    at.run()  # loads the model, runs it over the samples, draws the Compare classes page

    def check() -> None:
        if at.exception or at.error:
            raise SystemExit(f"the app failed: {[e.message for e in at.exception] or [e.value for e in at.error]}")
        if "Compare classes" not in [h.value for h in at.header]:
            raise SystemExit("not on the Compare classes page")

    check()
    marks = {1, 10, args.runs} | (set(range(args.every, args.runs, args.every)) if args.every > 0 else set())
    measured: dict[int, float] = {}
    start = time.perf_counter()
    for i in range(1, args.runs + 1):
        if not args.no_toggle:
            at.number_input(key="fig6_seed").set_value(i % 2)
        at.run()
        check()
        if i in marks:
            gc.collect()
            measured[i] = rss_mb()
            print(f"after rerun {i:4d}: RSS {measured[i]:8.1f} MB", flush=True)
    elapsed = time.perf_counter() - start
    first, last = measured[1], measured[args.runs]
    print(f"reruns: {args.runs} ({'seed toggled' if not args.no_toggle else 'no widget change'}), "
          f"{elapsed / args.runs * 1000:.0f} ms per rerun")
    print(f"RSS first {first:.1f} MB, last {last:.1f} MB, growth {last - first:+.1f} MB, "
          f"ratio last/first {last / first:.3f}")
    print(f"after rerun 10 -> last: {last - measured[10]:+.1f} MB "
          f"({(last - measured[10]) / max(args.runs - 10, 1) * 1024:+.1f} kB per rerun)")


if __name__ == "__main__":
    main()
