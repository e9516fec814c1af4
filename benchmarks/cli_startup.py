"""Start-up time and peak memory of the command line, for this checkout and others in one run.

Measures, per checkout (this one, and each ``--repo``), in fresh processes:

- ``python -m senet_viz --help``: wall time, best of ``--runs`` (target under 1.5 s on an idle machine);
- ``stats`` and ``figure --kind fig6`` on a synthetic extract shaped like SE-ResNet-50 over ImageNet (16 SE blocks:
  256 x3, 512 x4, 1024 x6, 2048 x3 channels = 15,104 float16 gates per image; ``--images`` images over
  ``--classes`` classes), written with the project's Parquet store writer so ``stats`` reads it as a real extract:
  peak RSS of the command's process (``os.wait4``) and its wall time (target under 600 MB).

The extract is written once into ``--work`` and reused. Each checkout runs with ``PYTHONPATH=<repo>`` from its own
folder, with this interpreter; ``figure`` reads the statistics that the same checkout's ``stats`` wrote. The
ratios printed are other / this (e.g. before / after).

    python benchmarks/cli_startup.py --repo /work/before [--images 5000] [--classes 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
# SE-ResNet-50: SE blocks per stage (2..5) and their channels
STAGES = ((2, 3, 256), (3, 4, 512), (4, 6, 1024), (5, 3, 2048))
HELP_TARGET_S = 1.5
RSS_TARGET_MB = 600


def se_resnet50_blocks() -> list[SimpleNamespace]:
    return [SimpleNamespace(name=f"SE_{stage}_{i + 1}", path=f"layer{stage - 1}.{i}.se.gate", stage=stage, index=i + 1,
                            channels=channels)
            for stage, count, channels in STAGES for i in range(count)]


def write_extract(path: Path, images: int, classes: int, chunk: int = 500) -> None:
    """A synthetic extract: each class has its own mean gate per channel, images scatter around it."""
    import numpy as np

    try:
        from senet_viz.data.store import ExcitationWriter
    except ImportError:  # the flat layout (before the subpackages)
        from senet_viz.store import ExcitationWriter

    blocks = se_resnet50_blocks()
    rng = np.random.default_rng(0)
    names = [f"class{k:04d}" for k in range(classes)]
    centre = {b.name: rng.normal(1.0 + b.stage / 2, 1.0, size=(classes, b.channels)).astype(np.float32)
              for b in blocks}
    meta = {"model": "seresnet50_synthetic", "weights": "synthetic", "weights_id": "none", "class_names": names,
            "shard": None}
    tmp = path.with_suffix(".part")
    with ExcitationWriter(tmp, blocks, meta) as writer:
        for start in range(0, images, chunk):
            idx = np.arange(start, min(images, start + chunk))
            labels = idx % classes
            gates = {b.name: (1 / (1 + np.exp(-(centre[b.name][labels] + rng.normal(0, 0.7, (len(idx), b.channels))
                                                 .astype(np.float32))))).astype(np.float16) for b in blocks}
            writer.write(SimpleNamespace(
                keys=[f"val/{names[k]}/img{i:06d}.JPEG" for i, k in zip(idx, labels, strict=True)],
                names=[f"img{i:06d}.JPEG" for i in idx], labels=labels.astype(np.int32),
                label_names=[names[k] for k in labels], pred=labels.astype(np.int32), gates=gates, n=len(idx)))
    tmp.replace(path)


def measure(cmd: list[str], repo: Path) -> dict:
    """Run ``cmd`` from ``repo`` with ``PYTHONPATH=repo``; its wall time, exit code and peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} in {repo} failed ({proc.returncode}):\n{err.read().decode()[-2000:]}")
    return {"wall_s": wall, "rss_mb": usage.ru_maxrss / 1024}


def checkout(repo: Path, extract: Path, out: Path, runs: int) -> dict:
    cli = [sys.executable, "-m", "senet_viz"]
    helps = [measure([*cli, "--help"], repo) for _ in range(runs)]
    stats = measure([*cli, "stats", "--excitations", str(extract), "--out", str(out)], repo)
    figure = measure([*cli, "figure", "--stats", str(out), "--kind", "fig6", "--out", str(out.with_suffix(".html"))],
                     repo)
    return {"help_s": min(h["wall_s"] for h in helps), "help_rss_mb": min(h["rss_mb"] for h in helps),
            "stats_rss_mb": stats["rss_mb"], "stats_s": stats["wall_s"],
            "figure_rss_mb": figure["rss_mb"], "figure_s": figure["wall_s"]}


ROWS = (("help_s", "--help wall time (best of runs), s", HELP_TARGET_S),
        ("help_rss_mb", "--help peak RSS, MB", None),
        ("stats_rss_mb", "stats peak RSS, MB", RSS_TARGET_MB),
        ("stats_s", "stats wall time, s", None),
        ("figure_rss_mb", "figure fig6 peak RSS, MB", RSS_TARGET_MB),
        ("figure_s", "figure fig6 wall time, s", None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, action="append", default=[],
                        help="another checkout to measure too (repeatable), e.g. a worktree of an older commit")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="--help runs; the best counts")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "senet_viz_cli_startup",
                        help="where the synthetic extract is written once and kept")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    extract = args.work / f"seresnet50_{args.images}x{args.classes}.parquet"
    if not extract.exists():
        start = time.perf_counter()
        write_extract(extract, args.images, args.classes)
        print(f"wrote {extract} ({extract.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
    repos = [ROOT, *(r.resolve() for r in args.repo)]
    results, failed = {}, {}
    for i, repo in enumerate(repos):
        try:
            results[str(repo)] = checkout(repo, extract, args.work / f"stats_{i}.parquet", args.runs)
        except RuntimeError as exc:  # e.g. a tree in the middle of a change: the others are still measured
            failed[str(repo)] = str(exc)
            results[str(repo)] = dict.fromkeys((key for key, _, _ in ROWS), float("nan"))
    if args.json:
        print(json.dumps({"images": args.images, "classes": args.classes, "results": results, "failed": failed},
                         indent=2))
        return
    print(f"extract: {args.images:,} images x {sum(c * n for _, n, c in STAGES):,} gates, {args.classes:,} classes; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    names = [r.name or str(r) for r in repos]
    head = f"{'':36s}" + "".join(f"{n[-14:]:>15s}" for n in names)
    head += "".join(f"{n[-10:] + ' / ' + names[0][-6:]:>22s}" for n in names[1:])
    print(head)
    for key, label, target in ROWS:
        values = [results[str(r)][key] for r in repos]
        line = f"{label:36s}" + "".join(f"{v:15.2f}" for v in values)
        line += "".join(f"{v / values[0]:22.2f}" for v in values[1:])
        if target is not None:
            line += f"   target < {target}: {'OK' if values[0] < target else 'MISSED'} (this checkout)"
        print(line)
    for repo, error in failed.items():
        print(f"\n{repo} failed: {error}")


if __name__ == "__main__":
    main()
