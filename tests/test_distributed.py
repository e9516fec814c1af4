"""Several processes give the single-process result: ``torchrun --nproc_per_node=2`` (gloo, CPU) against one
process, on the embedded Fashion-MNIST SE-ResNet and its sample images, for paper, extract, evaluate and sweep (one
launch for the module, running every command: see the ``launch`` fixture); plus the rank bookkeeping (environment,
shards, error agreement) without launching anything.

The single-process reference runs in this process with one intra-op thread, as each torchrun worker does
(torchrun sets OMP_NUM_THREADS=1): CPU kernels may round differently with another thread count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO_ROOT, require

from senet_viz import cli
from senet_viz.analysis.stats import GateStats
from senet_viz.cli.common import UserError, agreed
from senet_viz.data.sources import ImageItem, ImageSet
from senet_viz.data.store import read_excitations
from senet_viz.inference.distributed import DistributedError, Group, RankInfo, _combine_sweep_rows, rank_info
from senet_viz.models.download import WEIGHTS_DIR_ENV

SAMPLES = REPO_ROOT / "assets" / "fmnist_samples"
RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "SLURM_NTASKS")
# 4 images of each of the 10 classes: small enough for 2 CPU cores, large enough for several batches per rank.
COMMON = ("--model", "se_resnet_fmnist", "--images", str(SAMPLES), "--device", "cpu", "--per-class", "4", "--json")
N = 40
EXTRACT = ("extract", *COMMON, "--chunk", "12", "--batch-size", "4")
EVALUATE = ("evaluate", *COMMON, "--ablate", "stage:5", "--mode", "mean")
SWEEP = ("sweep", *COMMON, "--modes", "identity,mean", "--kinds", "stage")


@pytest.fixture(scope="module", autouse=True)
def prerequisites() -> None:
    require(SAMPLES.is_dir() and any(SAMPLES.rglob("*.png")), f"needs the embedded samples in {SAMPLES}")
    require(torch.distributed.is_available() and torch.distributed.is_gloo_available(),
            "needs torch.distributed with the gloo backend")


def torchrun(jobs: dict[str, list[str | Path]], out: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """One ``python -m torch.distributed.run --standalone --nproc_per_node=2`` launch of tests/torchrun_commands.py
    from the repo root, running every job of ``jobs`` (name -> ``python -m senet_viz`` argv) in order on both ranks;
    --standalone lets the rendezvous pick a free port (no race with another test run)."""
    env = {k: v for k, v in os.environ.items() if k != WEIGHTS_DIR_ENV and k not in RANK_VARS}
    env["OMP_NUM_THREADS"] = "1"
    spec = out / "jobs.json"
    spec.write_text(json.dumps({name: [str(a) for a in argv] for name, argv in jobs.items()}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO_ROOT / "tests" / "torchrun_commands.py"), str(spec), str(out)]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@dataclass
class Ranks:
    """One job of the launch: each rank's exit code, stdout and stderr."""

    codes: list[int]
    stdout: list[str]
    stderr: list[str]

    def json(self) -> dict:
        """What a successful command's ``--json`` printed: one document, from rank 0 only."""
        assert self.codes == [0, 0], self.stderr
        assert not any("Traceback" in err or "error:" in err for err in self.stderr), self.stderr
        assert self.stdout[1] == ""  # rank 1 printed nothing
        return json.loads(self.stdout[0])


@pytest.fixture(scope="module")
def launch(tmp_path_factory) -> tuple[Path, dict[str, Ranks]]:
    """ONE torchrun launch (2 ranks) running paper, extract, evaluate, sweep and a sweep with a user error, in
    that order: the folder the commands wrote into, and each job's result per rank. paper runs in a process group
    that the CLI creates and destroys itself, the later commands in the launch's own (tests/torchrun_commands.py)."""
    two = tmp_path_factory.mktemp("torchrun")
    jobs: dict[str, list[str | Path]] = {
        "paper": ["paper", *COMMON, "--out", two / "paper"],
        "extract": [*EXTRACT, "--out", two / "extract.parquet"],
        "evaluate": list(EVALUATE),
        "sweep": [*SWEEP, "--out", two / "sweep.csv"],
        "user_error": ["sweep", *COMMON, "--modes", "identity,bogus", "--out", two / "x.csv"],
    }
    proc = torchrun(jobs, two)
    assert proc.returncode == 0, proc.stderr[-4000:]  # every rank ran every job (a crash is not an exit code)
    results = {}
    for name in jobs:
        files = [(two / f"{name}.rank{r}.code", two / f"{name}.rank{r}.out", two / f"{name}.rank{r}.err")
                 for r in range(2)]
        results[name] = Ranks([int(c.read_text()) for c, _, _ in files], [o.read_text() for _, o, _ in files],
                              [e.read_text() for _, _, e in files])
    return two, results


@pytest.fixture
def one_process(monkeypatch, capsys):
    """Run the CLI in this process, single-rank, with one intra-op thread; returns its JSON output."""
    for var in (WEIGHTS_DIR_ENV, *RANK_VARS):
        monkeypatch.delenv(var, raising=False)

    def run(*args: str | Path) -> dict:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            capsys.readouterr()
            assert cli.main([str(a) for a in args]) == 0
        finally:
            torch.set_num_threads(threads)
        return json.loads(capsys.readouterr().out)

    return run


# ------------------------------------------------------------------------------------------------- torchrun


@pytest.mark.torchrun
def test_paper_statistics_are_reduced_exactly(launch, tmp_path: Path, one_process):
    folder, results = launch
    two = results["paper"].json()
    one = one_process("paper", *COMMON, "--out", tmp_path / "one")
    assert two["n_images"] == one["n_images"] == N and two["classes"] == one["classes"]
    assert len(two["classes"]) == 4 and set(two["classes"].values()) == {4}
    assert sorted(two["files"]) == sorted(one["files"])
    assert all(Path(path).is_file() for path in two["files"].values())

    a = GateStats.load(tmp_path / "one" / "stats.parquet").frame()
    b = GateStats.load(folder / "paper" / "stats.parquet").frame()
    keys = ["block", "class", "channel"]
    assert len(a) == len(b) > 0 and a[keys].equals(b[keys])
    assert (a["count"].to_numpy() == b["count"].to_numpy()).all()
    assert set(a.loc[a["class"] == "all", "count"]) == {N}
    np.testing.assert_allclose(b["mean"], a["mean"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(b["std"], a["std"], rtol=0, atol=1e-9)
    assert (a["min"].to_numpy() == b["min"].to_numpy()).all() and (a["max"].to_numpy() == b["max"].to_numpy()).all()
    assert all((x == y).all() for x, y in zip(a["hist"], b["hist"], strict=True))
    for x, y in zip(one["indices"], two["indices"], strict=True):
        assert x.keys() == y.keys()
        for k, v in x.items():
            assert y[k] == (pytest.approx(v, rel=1e-9, abs=1e-12, nan_ok=True) if isinstance(v, float) else v), k


@pytest.mark.torchrun
def test_extract_writes_the_single_process_file(launch, tmp_path: Path, one_process):
    # Chunks of 12 images in batches of 4: chunks 0, 2 on rank 0 and 1, 3 on rank 1 (the last chunk is short).
    folder, results = launch
    two = results["extract"].json()
    one = one_process(*EXTRACT, "--out", tmp_path / "one.parquet")
    assert {k: v for k, v in two.items() if k != "out"} == {k: v for k, v in one.items() if k != "out"}
    assert two["n_images"] == N

    a, b = read_excitations(tmp_path / "one.parquet"), read_excitations(folder / "extract.parquet")
    assert b.keys == a.keys == sorted(a.keys)  # the same rows in the same (sorted-key) order
    assert (b.labels == a.labels).all() and (b.pred == a.pred).all() and b.meta == a.meta
    for name, gates in a.gates.items():
        assert gates.shape[0] == N and np.array_equal(b.gates[name], gates), name
    import pyarrow.parquet as pq

    assert pq.ParquetFile(folder / "extract.parquet").metadata.num_row_groups == 4


@pytest.mark.torchrun
def test_evaluate_metrics_are_the_single_process_numbers(launch, one_process):
    # mean mode: the calibration gates are gathered from both ranks before the ablated pass.
    two = launch[1]["evaluate"].json()
    one = one_process(*EVALUATE)
    assert two == one  # top-1, top-5, agreement, KL, per-class changes: bit for bit
    assert one["n_calibration"] > 0 and one["n_images"] + one["n_calibration"] == N
    assert one["kl"] > 0  # freezing stage 5 changes the outputs: there is something to compare


@pytest.mark.torchrun
def test_sweep_metrics_are_the_single_process_numbers(launch, tmp_path: Path, one_process):
    folder, results = launch
    results["sweep"].json()
    one_process(*SWEEP, "--out", tmp_path / "one.csv")
    a, b = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(folder / "sweep.csv")
    assert list(a.columns) == list(b.columns) and len(a) == len(b) == 8  # 4 stages x 2 modes
    exact = [c for c in a.columns if c != "kl"]
    pd.testing.assert_frame_equal(a[exact], b[exact], check_exact=True)
    np.testing.assert_allclose(b["kl"], a["kl"], rtol=1e-12, atol=0)
    assert (a["n_images"] + a["n_calibration"] == N).all() and (a["kl"] > 0).any()


@pytest.mark.torchrun
def test_a_user_error_is_reported_once_and_every_rank_stops(launch):
    folder, results = launch
    failed = results["user_error"]
    assert all(code != 0 for code in failed.codes) and failed.stdout == ["", ""]
    assert not (folder / "x.csv").exists()
    errors = [line for err in failed.stderr for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'bogus'" in errors[0], failed.stderr
    assert not any("Traceback" in err for err in failed.stderr)


# ------------------------------------------------------------------------------------------ rank bookkeeping


def test_rank_info_reads_torchrun_then_srun_variables():
    assert rank_info({}) == RankInfo()
    assert rank_info({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == RankInfo(3, 4, 1, "torchrun")
    slurm = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8"}
    assert rank_info(slurm) == RankInfo(5, 8, 1, "slurm")
    # torchrun inside an srun step: torchrun's variables win.
    assert rank_info({**slurm, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}).world == 2
    # The batch script itself has SLURM_NTASKS and SLURM_PROCID but is one process: no waiting for peers.
    assert not rank_info({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0"}).distributed
    for bad in ({"RANK": "4", "WORLD_SIZE": "4"}, {"RANK": "x", "WORLD_SIZE": "2"}, {"WORLD_SIZE": "2"}):
        with pytest.raises(DistributedError):
            rank_info(bad)


def _items(n: int) -> ImageSet:
    return ImageSet([ImageItem(f"k{i:03d}", f"k{i:03d}.png", i % 3, None, path=Path(f"k{i:03d}.png"))
                     for i in range(n)], [], ["a", "b", "c"])


@pytest.mark.parametrize(("n", "world", "batch"), [(23, 2, 4), (7, 3, 4), (2, 4, 1), (0, 2, 8)])
def test_shards_are_whole_single_process_batches_that_cover_the_set(n: int, world: int, batch: int):
    images = _items(n)
    single_batches = [images.items[s:s + batch] for s in range(0, n, batch)]
    shares = [Group(RankInfo(r, world), "cpu").shard(images, batch) for r in range(world)]
    assert sorted(it.key for s in shares for it in s.items) == [it.key for it in images.items]  # disjoint cover
    for r, share in enumerate(shares):
        # Batching the share again gives exactly the single-process batches r, r + world, ...
        rebatched = [share.items[s:s + batch] for s in range(0, len(share.items), batch)]
        assert rebatched == single_batches[r::world]


def test_sweep_rows_combine_from_counts():
    rows = [{"config": "stage 5", "top1": 2 / 3, "full_top1": 1.0, "top5": 1.0, "full_top5": 1.0, "agreement": 0.5,
             "kl": 0.25, "n_images": 4, "n_scored": 3, "n_skipped": 1, "d_top1": None, "d_top5": None},
            {"config": "stage 5", "top1": None, "full_top1": None, "top5": None, "full_top5": None, "agreement": None,
             "kl": None, "n_images": 0, "n_scored": 0, "n_skipped": 0, "d_top1": None, "d_top5": None},
            {"config": "stage 5", "top1": 0.0, "full_top1": 0.5, "top5": 0.5, "full_top5": 1.0, "agreement": 1.0,
             "kl": 0.0, "n_images": 2, "n_scored": 2, "n_skipped": 0, "d_top1": None, "d_top5": None}]
    out = _combine_sweep_rows(rows)
    assert out["top1"] == 2 / 5 and out["full_top1"] == 4 / 5 and out["top5"] == 4 / 5
    assert out["agreement"] == 4 / 6 and out["kl"] == pytest.approx(1 / 6) and out["n_images"] == 6
    assert out["d_top1"] == pytest.approx(-40.0) and out["n_skipped"] == 1
    with pytest.raises(RuntimeError, match="config"):
        _combine_sweep_rows([rows[0], {**rows[2], "config": "stage 4"}])


class _StubGroup:
    """Ranks whose exchange of failures is scripted: ``failures[r]`` is rank r's message or None."""

    def __init__(self, rank: int, failures: list[str | None]) -> None:
        self.rank, self.failures = rank, failures

    @property
    def main(self) -> bool:
        return self.rank == 0

    def first_error(self, error):
        merged = [error if r == self.rank else f for r, f in enumerate(self.failures)]
        return next(((r, m) for r, m in enumerate(merged) if m is not None), None)


def test_setup_failures_stop_every_rank_and_rank_0_reports_them():
    def fails():
        raise UserError("no images found in /x")

    assert agreed(_StubGroup(0, [None, None]), lambda: 42) == 42
    with pytest.raises(UserError, match="^rank 1: disk full$"):  # rank 0 was fine, rank 1 failed alone
        agreed(_StubGroup(0, [None, "disk full"]), lambda: 42)
    with pytest.raises(UserError, match="^no images found in /x$"):
        agreed(_StubGroup(0, [None, "no images found in /x"]), fails)
    with pytest.raises(SystemExit) as exc:  # another rank: quiet, exit 2
        agreed(_StubGroup(1, ["no images found in /x", None]), fails)
    assert exc.value.code == 2
