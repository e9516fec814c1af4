"""Chance levels in the app (issue 20), with the embedded model ``se_resnet_fmnist``: the Depth page draws each index's
chance band and bootstrap interval and says how they were made; Compare's index table sets each index beside its
chance level, p and interval; with one image per class the verdict says "cannot tell, because ..."."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from apptest_helpers import app_session, assert_ok, open_page, shown, uploader
from conftest import EMBEDDED_MISSING, embedded_model_ready, requires
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
MODEL = "se_resnet_fmnist"
SAMPLES = ROOT / "assets" / "fmnist_samples"

pytestmark = requires(embedded_model_ready(MODEL), EMBEDDED_MISSING)


def depth_figure(at: AppTest) -> dict:
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(charts) == 1
    return charts[0]


def chance_frame(at: AppTest):
    """The index-beside-chance table on the page (found by its columns)."""
    found = [d.value for d in at.main.dataframe if "eta2 chance" in d.value.columns]
    assert len(found) == 1, [list(d.value.columns) for d in at.main.dataframe]
    return found[0]


def texts(at: AppTest) -> str:
    return "\n".join([shown(m.value) for m in at.main.markdown] + [c.value for c in at.main.caption])


@pytest.mark.slow
def test_depth_draws_chance_bands_and_compare_sets_indices_beside_chance():
    at = app_session(MODEL)  # the embedded samples: 30 images in each of 10 classes
    assert_ok(at)
    open_page(at, "depth", "Depth profile")
    fig = depth_figure(at)
    kinds = {(t.get("meta") or {}).get("kind") for t in fig["data"]}
    assert {"chance band", "chance level"} <= kinds, kinds
    index = [t for t in fig["data"] if (t.get("meta") or {}).get("metric") == "specificity"
             and "kind" not in t["meta"]]
    assert len(index) == 1 and "array" in index[0]["error_y"] and "arrayminus" in index[0]["error_y"]
    subtitle = fig["layout"]["title"]["subtitle"]["text"]
    assert "label permutations, seed 0" in subtitle and "bootstrap interval" in subtitle and "300" in subtitle
    assert "label permutations, seed 0" in texts(at)
    table = chance_frame(at)
    assert {"eta2", "eta2 chance", "eta2 p", "eta2 95% interval", "eta2 above chance"} <= set(table.columns)
    assert table["eta2 above chance"].str.match(r"^(yes|no|cannot tell)").all(), table["eta2 above chance"]

    open_page(at, "compare", "Compare classes")
    table = chance_frame(at)
    for index in ("eta2", "spread", "cross_class_corr"):
        assert {index, f"{index} chance", f"{index} p", f"{index} 95% interval", f"{index} above chance"} <= \
            set(table.columns), table.columns
    assert table["eta2 chance"].notna().all() and (table["eta2 p"] > 0).all()
    # "above chance" only where the permutation p says so
    yes = table["eta2 above chance"] == "yes"
    assert (table.loc[yes, "eta2 p"] < 0.05).all() and (table.loc[table["eta2 p"] >= 0.05, "eta2 above chance"]
                                                         != "yes").all()


@pytest.mark.slow
def test_one_image_per_class_cannot_tell():
    at = app_session(MODEL)
    at.radio(key="image_source").set_value("Upload by class")
    at.run()
    for slot, cls in enumerate(("Bag", "Sneaker")):
        at.text_input(key=f"class_name_{slot}").set_value(cls)
    for slot, cls in enumerate(("Bag", "Sneaker")):
        image = sorted((SAMPLES / cls).glob("*.png"))[0]
        uploader(at, slot).set_value([(f"{cls}.png", image.read_bytes(), "image/png")])
        at.run()
    assert_ok(at)
    open_page(at, "depth", "Depth profile")
    text = texts(at)
    assert "cannot tell, because" in text, text
    table = chance_frame(at)
    assert table["eta2 above chance"].str.startswith("cannot tell").all(), table["eta2 above chance"]
