"""The chance table from the command line (issue 20): ``stats`` computes it from extract shards block by block, prints
it, saves it as CSV and JSON beside the statistics and into the bundle; an opened bundle gives it back to the app,
and an older bundle without it still opens (chance unknown). In process, on the embedded model's samples."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import EMBEDDED_MISSING, REPO_ROOT, embedded_model_ready, requires

from senet_viz import cli
from senet_viz.analysis.bundle import provenance, read_bundle, write_bundle
from senet_viz.analysis.stats import GateStats

MODEL = "se_resnet_fmnist"
SAMPLES = REPO_ROOT / "assets" / "fmnist_samples"
PER_CLASS = 3
N = 10 * PER_CLASS
CHANCE = ("--permutations", "29", "--bootstrap", "10", "--seed", "3")

pytestmark = requires(embedded_model_ready(MODEL), EMBEDDED_MISSING)


def run(capsys, *args: str | Path) -> list:
    code = cli.main([str(a) for a in args] + ["--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    return json.loads(out)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("chance_cli")


@pytest.fixture(scope="module")
def extracted(workdir) -> Path:
    out = workdir / "gates.parquet"
    assert cli.main(["extract", "--model", MODEL, "--device", "cpu", "--images", str(SAMPLES), "--per-class",
                     str(PER_CLASS), "--out", str(out), "--batch-size", "10"]) == 0
    return out


@pytest.fixture(scope="module")
def stats_run(extracted, workdir):
    out, bundle = workdir / "stats.parquet", workdir / "analysis.senetviz.zip"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli.main(["stats", "--excitations", str(extracted), "--out", str(out), "--bundle", str(bundle),
                         *CHANCE, "--json"])
    assert code == 0
    return json.loads(buffer.getvalue()), out, bundle


def test_stats_json_carries_the_chance_table_with_its_settings(stats_run):
    rows, out, _ = stats_run
    assert len(rows) > 3
    for row in rows:
        chance = row["chance"]
        assert chance["block"] == row["block"]
        assert chance["n_permutations"] == 29 and chance["n_bootstrap"] == 10 and chance["seed"] == 3
        assert chance["n_images"] == N and chance["n_classes"] == 10 and chance["cannot_tell"] == ""
        for index in ("eta2", "spread", "cross_class_corr", "selectivity_median", "saturation"):
            for part in ("_chance", "_null_lo", "_null_hi", "_p", "_ci_lo", "_ci_hi", "_above_chance"):
                assert index + part in chance, index + part
        # the same images as the statistics: the observed values agree
        assert chance["eta2"] == pytest.approx(row["eta2"], abs=1e-6)
        assert chance["saturation"] == pytest.approx(row["saturation"], abs=1e-9)
        assert chance["eta2_chance_exact"] == pytest.approx(9 / (N - 1))
        assert chance["eta2_p"] >= 1 / 30 - 1e-12  # (k + 1) / (n + 1): never below 1 / (permutations + 1)
        assert chance["eta2_above_chance"] == (chance["eta2_p"] < 0.05)
    saved = pd.read_csv(out.with_name("stats.chance.csv"))
    assert list(saved["block"]) == [r["block"] for r in rows]
    assert (saved["n_permutations"] == 29).all() and (saved["seed"] == 3).all()
    assert json.loads(out.with_name("stats.chance.json").read_text())[0]["block"] == rows[0]["block"]


def test_the_bundle_keeps_the_chance_table_and_the_app_reads_it(stats_run):
    from ui.bundles import OLD_BUNDLE_NOTE, bundle_analysis, open_bundle
    from ui.results import Analysis

    rows, out, bundle_path = stats_run
    bundle = read_bundle(bundle_path)
    assert bundle.chance is not None
    assert list(bundle.chance["block"]) == [r["block"] for r in rows]
    for row, (_, kept) in zip(rows, bundle.chance.iterrows(), strict=True):
        assert kept["n_permutations"] == 29 and kept["seed"] == 3
        assert kept["eta2_p"] == pytest.approx(row["chance"]["eta2_p"])
        assert kept["eta2_null_hi"] == pytest.approx(row["chance"]["eta2_null_hi"])
        assert isinstance(kept["eta2_above_chance"], bool | np.bool_) and kept["cannot_tell"] == ""
    analysis = bundle_analysis(open_bundle(bundle_path.read_bytes()))
    assert isinstance(analysis, Analysis) and analysis.chance is not None and analysis.chance_note == ""

    # a bundle written before chance tables existed opens, with chance unknown
    old = write_bundle(out.with_name("old.senetviz.zip"), GateStats.load(out),
                       provenance(model=MODEL, weights="?", weights_digest="?", images="?", n_images=N, n_classes=10))
    assert read_bundle(old).chance is None
    analysis = bundle_analysis(open_bundle(old.read_bytes()))
    assert analysis.chance is None and analysis.chance_note == OLD_BUNDLE_NOTE


def test_chance_images_caps_the_sample_and_the_text_output_names_the_settings(extracted, capsys):
    rows = run(capsys, "stats", "--excitations", extracted, "--permutations", "9", "--bootstrap", "5",
               "--chance-images", "12")
    assert {r["chance"]["n_images"] for r in rows} == {12}
    assert {r["chance"]["n_permutations"] for r in rows} == {9}
    assert cli.main(["stats", "--excitations", str(extracted), "--permutations", "9", "--bootstrap", "5"]) == 0
    text = capsys.readouterr().out
    assert "9 label permutations, seed 0" in text and "eta2 chance" in text and "above chance" in text
    assert cli.main(["stats", "--excitations", str(extracted), "--chance-images", "0"]) == 2
