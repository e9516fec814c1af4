"""Gate statistics at ImageNet scale: SE-ResNet-50's 16 SE blocks (15,104 gates per image) over 1,000 classes.

Synthetic gates with legacy_seresnet50's real block shapes (SE_2_1..SE_5_3: 256 x3, 512 x4, 1024 x6, 2048 x3),
1,000 classes x 50 images (the paper's Fig. 6 "all classes" curve is over the 50,000 ImageNet validation images),
fed to GateStats in batches of 256 as an extract would. Each phase runs in a fresh child process, so the peak RSS
it reports (``resource.getrusage``) is that phase's own:

- ``stream``: one pass over every image. Peak RSS (target <= 1.5 GB), update throughput (images/s, the time inside
  ``GateStats.update`` only; making the synthetic gates is not counted), bytes of statistics. Saves the result.
- ``shards``: the two halves streamed apart, then save both + load both + merge (time); the merged statistics
  against the one pass (largest |mean difference|, counts equal).
- ``figures``: load the saved statistics and draw, each from bounded views of them: Fig. 6 (4 classes + all, the
  preset blocks) and the depth profile (targets <= 5 s each), the distributions (stage 5, 4 classes + all),
  the class x channel heatmap of all 1,000 classes x 2,048 channels, Fig. 7 and one image's percentiles.
  "draw" = statistics -> plotly Figure; "json" = serialising it (what a browser or an .html file receives).
- ``before`` (``--before REV``, default the last commit with the old layout): the same protocol on fewer classes
  (``--before-classes`` x ``--before-images``) with ``git show REV:senet_viz/stats.py`` / ``plots.py`` loaded
  as
  temporary modules, and the current code on the same data: peak RSS, update and figure times, and their ratios.

    python benchmarks/stats_scale.py [--classes 1000] [--images 50] [--before e026c0f] [--no-before]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# legacy_seresnet50's SE blocks: (stage, blocks, channels); 15,104 gates per image.
SHAPES = ((2, 3, 256), (3, 4, 512), (4, 6, 1024), (5, 3, 2048))
BLOCKS = [{"name": f"SE_{s}_{i}", "stage": s, "channels": c} for s, n, c in SHAPES for i in range(1, n + 1)]
BATCH = 256
OLD_LAYOUT_REV = "e026c0f"  # the last commit whose stats.py keeps per-class per-channel histograms


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Gates:
    """Deterministic synthetic gates: class-dependent channel means, more class-specific with depth, plus noise."""

    def __init__(self, classes: int, images: int, seed: int = 0) -> None:
        import numpy as np

        rng = np.random.default_rng(seed)
        self.labels = rng.permutation(np.repeat(np.arange(classes), images))
        self.n_batches = -(-len(self.labels) // BATCH)
        self.centres = {}
        for order, b in enumerate(BLOCKS):
            c = b["channels"]
            base = rng.normal(0, 1.5, c)
            spread = 0.1 + 1.5 * order / (len(BLOCKS) - 1)  # class-agnostic early, class-specific late
            z = base + spread * rng.standard_normal((classes, c), dtype=np.float32)
            self.centres[b["name"]] = (1 / (1 + np.exp(-z))).astype(np.float16)

    def batch(self, i: int) -> tuple[object, dict]:
        import numpy as np

        labels = self.labels[i * BATCH:(i + 1) * BATCH]
        rng = np.random.default_rng([1, i])
        gates = {}
        for name, centre in self.centres.items():
            noise = rng.standard_normal((len(labels), centre.shape[1]), dtype=np.float32) * 0.08
            gates[name] = np.clip(centre[labels] + noise, 0, 1).astype(np.float16)
        return labels, gates


def _load_module(name: str, source: str):
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(name, f.name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def _feed(stats, data: Gates, batches) -> tuple[int, float]:
    seconds, n = 0.0, 0
    for i in batches:
        labels, gates = data.batch(i)
        start = time.perf_counter()
        for name, g in gates.items():
            stats.update(name, g, labels)
        seconds += time.perf_counter() - start
        n += len(labels)
    return n, seconds


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# ----------------------------------------------------------------------------------------------- phases


def phase_stream(args) -> dict:
    from senet_viz.analysis.stats import GateStats

    data = Gates(args.classes, args.images)
    stats = GateStats.for_blocks("legacy_seresnet50 (synthetic gates)", BLOCKS,
                                 [f"class {k:04d}" for k in range(args.classes)])
    n, seconds = _feed(stats, data, range(data.n_batches))
    _, save_s = _timed(lambda: stats.save(args.file))
    return {"images": n, "update_s": seconds, "images_per_s": n / seconds, "stats_mb": stats.nbytes() / 2**20,
            "detailed_classes": len(stats.detailed_classes()), "save_s": save_s,
            "file_mb": Path(args.file).stat().st_size / 2**20, "peak_rss_mb": _rss_mb()}


def phase_shards(args) -> dict:
    import numpy as np

    from senet_viz.analysis.stats import GateStats

    data = Gates(args.classes, args.images)
    names = [f"class {k:04d}" for k in range(args.classes)]
    half = data.n_batches // 2
    parts = []
    for batches in (range(half), range(half, data.n_batches)):
        part = GateStats.for_blocks("legacy_seresnet50 (synthetic gates)", BLOCKS, names)
        _feed(part, data, batches)
        parts.append(part)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"half{i}.parquet" for i in range(2)]
        start = time.perf_counter()
        for part, path in zip(parts, paths, strict=True):
            part.save(path)
        save_s = time.perf_counter() - start
        del parts
        start = time.perf_counter()
        loaded = [GateStats.load(p) for p in paths]
        load_s = time.perf_counter() - start
        merged, merge_s = _timed(lambda: loaded[0].merge(loaded[1]))
    one = GateStats.load(args.file)
    worst = max(float(np.abs(one.class_means(b["name"])[2] - merged.class_means(b["name"])[2]).max()) for b in BLOCKS)
    same_counts = all((one.class_table(b["name"])["count"] == merged.class_table(b["name"])["count"]).all()
                      for b in BLOCKS)
    same_hist = all((one.hist(b["name"], "all") == merged.hist(b["name"], "all")).all() for b in BLOCKS)
    return {"save_s": save_s, "load_s": load_s, "merge_s": merge_s, "total_s": save_s + load_s + merge_s,
            "max_abs_mean_diff": worst, "counts_equal": bool(same_counts), "all_hist_equal": bool(same_hist),
            "peak_rss_mb": _rss_mb()}


def phase_figures(args) -> dict:
    import numpy as np

    from senet_viz import plots
    from senet_viz.analysis.stats import GateStats
    from senet_viz.analysis.stats_accumulate import ALL

    stats, load_s = _timed(lambda: GateStats.load(args.file))
    table = stats.class_table()
    real = table[table["class_index"] >= 0]
    palette = list(real["class"])
    four = palette[:4]
    out = {"load_s": load_s}

    def record(name, make):
        fig, draw = _timed(make)
        _, dump = _timed(fig.to_json)
        out[name] = {"draw_s": draw, "json_s": dump, "traces": len(fig.data)}

    indices = stats.indices()
    preset = plots.paper_preset_blocks(indices)
    record("fig6", lambda: plots.fig6(stats.frame(preset, four, hist=False), blocks=preset, classes=four,
                                      all_classes=palette))
    record("depth", lambda: plots.depth_profile(stats.indices()))  # indices() included: the figure's own cost
    stage5 = [b.name for b in stats.blocks if b.stage == 5]
    record("distributions", lambda: plots.distributions(stats.block_frame(stage5, [*four, ALL]), stage=5,
                                                        classes=[*four, ALL], all_classes=palette))

    def heat():
        labels, counts, means = stats.class_means("SE_5_3")
        return plots.heatmap_matrix(means, labels, counts, model=stats.model, block="SE_5_3")

    record("heatmap", heat)
    record("fig7", lambda: plots.fig7(stats.frame(["SE_5_3"], four[:1], hist=False), "SE_5_3", four[0],
                                      all_classes=palette))
    image = np.random.default_rng(3).uniform(size=2048)
    record("image_percentiles", lambda: plots.image_percentiles(stats.frame(["SE_5_3"], four[:1]), "SE_5_3",
                                                                four[0], image, "img", all_classes=palette))
    out["peak_rss_mb"] = _rss_mb()
    return out


def phase_before(args) -> dict:
    """The same small protocol through either the old code (``--which old``) or the current one."""
    if args.which == "old":
        stats_mod = _load_module("old_stats", subprocess.run(["git", "show",
        f"{args.before}:senet_viz/stats.py"],
                                                             cwd=ROOT, check=True, capture_output=True,
                                                             text=True).stdout)
        plots = _load_module("old_plots", subprocess.run(["git", "show", f"{args.before}:senet_viz/plots.py"],
                                                         cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    else:
        from senet_viz import plots
        from senet_viz.analysis import stats as stats_mod
    data = Gates(args.before_classes, args.before_images)
    names = [f"class {k:04d}" for k in range(args.before_classes)]
    stats = stats_mod.GateStats.for_blocks("legacy_seresnet50 (synthetic gates)", BLOCKS, names)
    n, seconds = _feed(stats, data, range(data.n_batches))
    four = names[:4]
    if args.which == "old":  # what the CLI and the pages did: the full frame, then the figure
        def fig6():
            frame = stats.frame()
            return plots.fig6(frame, classes=four)
    else:
        def fig6():
            preset = plots.paper_preset_blocks(stats.indices())
            return plots.fig6(stats.frame(preset, four, hist=False), blocks=preset, classes=four, all_classes=names)
    _, fig6_s = _timed(fig6)
    _, depth_s = _timed(lambda: plots.depth_profile(stats.indices()))
    return {"images": n, "update_s": seconds, "images_per_s": n / seconds, "fig6_s": fig6_s, "depth_s": depth_s,
            "peak_rss_mb": _rss_mb()}


# ----------------------------------------------------------------------------------------------- driver


def _child(phase: str, args, extra: list[str] | None = None) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--file", args.file, "--classes", str(args.classes),
           "--images", str(args.images), "--before", args.before, "--before-classes", str(args.before_classes),
           "--before-images", str(args.before_images), *(extra or [])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _verdict(value: float, target: float) -> str:
    return "OK" if value <= target else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--images", type=int, default=50, help="images per class")
    parser.add_argument("--before", default=OLD_LAYOUT_REV, help="git revision with the old statistics layout")
    parser.add_argument("--before-classes", type=int, default=100)
    parser.add_argument("--before-images", type=int, default=20)
    parser.add_argument("--no-before", action="store_true", help="skip the comparison with the old code")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--which", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phases = {"stream": phase_stream, "shards": phase_shards, "figures": phase_figures, "before": phase_before}
        print(json.dumps(phases[args.phase](args)))
        return

    channels = sum(b["channels"] for b in BLOCKS)
    print(f"{len(BLOCKS)} SE blocks, {channels:,} gates per image, {args.classes:,} classes x {args.images} images, "
          f"batches of {BATCH}")
    with tempfile.TemporaryDirectory() as tmp:
        args.file = str(Path(tmp) / "stats.parquet")
        s = _child("stream", args)
        print(f"stream : {s['images']:,} images, update {s['update_s']:.1f} s = {s['images_per_s']:,.0f} images/s; "
              f"statistics {s['stats_mb']:,.0f} MiB ({s['detailed_classes']} classes with per-channel histograms); "
              f"peak RSS {s['peak_rss_mb']:,.0f} MiB (target <= 1536) -> {_verdict(s['peak_rss_mb'], 1536)}")
        print(f"         save {s['save_s']:.1f} s, file {s['file_mb']:,.0f} MiB")
        h = _child("shards", args)
        print(f"shards : two halves: save {h['save_s']:.1f} s + load {h['load_s']:.1f} s + merge {h['merge_s']:.2f} s"
              f" = {h['total_s']:.1f} s; merged vs one pass: max |mean diff| {h['max_abs_mean_diff']:.1e}, counts "
              f"{'equal' if h['counts_equal'] else 'DIFFER'}, all-image histograms "
              f"{'equal' if h['all_hist_equal'] else 'DIFFER'}; peak RSS {h['peak_rss_mb']:,.0f} MiB")
        f = _child("figures", args)
        print(f"figures: statistics loaded in {f['load_s']:.1f} s; peak RSS {f['peak_rss_mb']:,.0f} MiB")
        for name, target in (("fig6", 5.0), ("depth", 5.0), ("distributions", None), ("heatmap", None),
                             ("fig7", None), ("image_percentiles", None)):
            r = f[name]
            goal = f" (target <= {target:g} s) -> {_verdict(r['draw_s'], target)}" if target else ""
            label = f"heatmap {args.classes}x2048" if name == "heatmap" else name
            print(f"  {label:<18} draw {r['draw_s']:6.2f} s, json {r['json_s']:5.2f} s, {r['traces']} traces{goal}")
    if args.no_before:
        return
    try:
        subprocess.run(["git", "cat-file", "-e", f"{args.before}:senet_viz/stats.py"], cwd=ROOT, check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        print(f"before : revision {args.before} not available; comparison skipped")
        return
    old = _child("before", args, ["--which", "old"])
    new = _child("before", args, ["--which", "new"])
    print(f"before : {args.before_classes} classes x {args.before_images} images, old code ({args.before}) vs now")
    for key, label in (("peak_rss_mb", "peak RSS MiB"), ("update_s", "update s"), ("fig6_s", "Fig. 6 s"),
                       ("depth_s", "depth s")):
        print(f"  {label:<13} old {old[key]:9.2f}  new {new[key]:9.2f}  ratio old/new {old[key] / new[key]:6.1f}")


if __name__ == "__main__":
    main()
