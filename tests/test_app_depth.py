"""AppTest tests of the Depth page's verdict against the paper, and of the one-image-per-class warnings
(Depth, Compare classes, Explore) with the embedded model ``se_resnet_fmnist``."""

from __future__ import annotations

from pathlib import Path

import pytest
from apptest_helpers import assert_ok, open_page, shown, uploader
from conftest import EMBEDDED_MISSING, embedded_model_ready, requires
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
MODEL = "se_resnet_fmnist"
SAMPLES = ROOT / "assets" / "fmnist_samples"
TIMEOUT = 180

pytestmark = requires(embedded_model_ready(MODEL), EMBEDDED_MISSING)


def sample(cls: str) -> Path:
    return sorted((SAMPLES / cls).glob("*.png"))[0]


def page_text(at: AppTest) -> str:
    return "\n".join(shown(m.value) for m in at.main.markdown)


@pytest.mark.slow
def test_depth_shows_the_verdict_line():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.selectbox(key="model_name").set_value(MODEL)
    at.run()
    assert_ok(at)
    open_page(at, "depth", "Depth profile")
    verdict = [line for line in page_text(at).splitlines() if line.startswith("**Verdict:**")]
    assert len(verdict) == 1, page_text(at)
    assert f"{MODEL} shows " in verdict[0] and " testable parts of the paper's pattern" in verdict[0]
    assert "Against the paper" in [s.value for s in at.subheader]
    assert "How to read this" in [e.label for e in at.expander]
    # 30 images per class: no one-image warning on the page
    assert not any("one image" in w.value for w in at.main.warning)


@pytest.mark.slow
def test_one_image_per_class_is_warned_on_depth_compare_and_explore():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.selectbox(key="model_name").set_value(MODEL)
    at.radio(key="image_source").set_value("Upload by class")
    at.run()
    assert_ok(at)
    at.text_input(key="class_name_0").set_value("Bag")
    at.text_input(key="class_name_1").set_value("Sneaker")
    uploader(at, 0).set_value([("bag.png", sample("Bag").read_bytes(), "image/png")])
    at.run()
    uploader(at, 1).set_value([("sneaker.png", sample("Sneaker").read_bytes(), "image/png")])
    at.run()
    assert_ok(at)

    open_page(at, "depth", "Depth profile")
    warnings = [w.value for w in at.main.warning]
    assert any("Every class has one image" in w and "eta² cannot be computed" in w and "±1 std" in w
               for w in warnings), warnings
    assert any(line.startswith("**Verdict:**") for line in page_text(at).splitlines())

    open_page(at, "compare", "Compare classes")
    warnings = [w.value for w in at.main.warning]
    assert any("Fig. 7's ±1 std bands cannot be computed" in w for w in warnings), warnings

    open_page(at, "explore", "Explore one image")
    infos = [i.value for i in at.main.info]
    assert any("percentiles within the class cannot be computed" in i for i in infos), infos
