"""AppTest tests of what a session keeps: uploads survive switching the image source, settings survive leaving a
page, a sweep runs only when asked for the current selection, uploads with ImageNet-style names are scored, and
Export lists only the current selection's results, every file tagged with model, weights and images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from apptest_helpers import assert_ok, open_page, shown, uploader
from conftest import EMBEDDED_MISSING, embedded_model_ready, requires
from streamlit.testing.v1 import AppTest

from senet_viz.analysis import ablation
from senet_viz.models import zoo

ROOT = Path(__file__).resolve().parents[1]
MODEL = "se_resnet_fmnist"
TWIN = "se_resnet_fmnist_nose5"
SAMPLES = ROOT / "assets" / "fmnist_samples"
SHARED = ROOT.parent / "shared"
IMAGENET = SHARED / "data" / "imagenet-samples"
TFLITE = SHARED / "models" / "mobilenet_v3_small_224_1.0_uint8.tflite"
TIMEOUT = 240

pytestmark = requires(embedded_model_ready(MODEL), EMBEDDED_MISSING)


def files(cls: str, n: int) -> list[tuple[str, bytes, str]]:
    return [(p.name, p.read_bytes(), "image/png") for p in sorted((SAMPLES / cls).glob("*.png"))[:n]]


def chart_spec(at: AppTest, index: int = 0) -> dict:
    return json.loads(at.get("plotly_chart")[index].proto.spec)


def uploaded_app() -> AppTest:
    """The embedded model with Bag (3 images) and Sneaker (2 images) uploaded into two named classes."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.selectbox(key="model_name").set_value(MODEL)
    at.radio(key="image_source").set_value("Upload by class")
    at.run()
    at.text_input(key="class_name_0").set_value("Bag")
    at.text_input(key="class_name_1").set_value("Sneaker")
    uploader(at, 0).set_value(files("Bag", 3))
    at.run()
    uploader(at, 1).set_value(files("Sneaker", 2))
    at.run()
    assert_ok(at)
    return at


@pytest.mark.slow
def test_uploads_survive_switching_the_source_away_and_back():
    at = uploaded_app()
    before = chart_spec(at)
    assert {t["name"] for t in before["data"]} == {"Bag (n=3)", "Sneaker (n=2)", "all (n=5)"}
    assert not uploader(at, 0).value  # the widget is emptied: the files live in session state
    captions = [c.value for c in at.sidebar.caption]
    assert any(c.startswith("3 file(s) in Bag") for c in captions), captions

    at.radio(key="image_source").set_value("Embedded samples")
    at.run()
    assert_ok(at)
    assert "300 images" in at.caption[0].value  # the other source is really shown
    open_page(at, "depth")  # and another page
    at.radio(key="image_source").set_value("Upload by class")
    at.run()
    open_page(at, "compare")
    assert [at.text_input(key=f"class_name_{i}").value for i in (0, 1)] == ["Bag", "Sneaker"]
    after = chart_spec(at)
    assert after["data"] == before["data"]  # the same files, the same figure
    assert at.caption[0].value.startswith("5 images, grouped by labels")

    # the user removes one file: it is gone, the rest stays
    drop = at.multiselect(key="drop_files_0")
    drop.set_value(drop.options[:1])
    at.run()
    at.button(key="drop_selected_0").click()
    at.run()
    assert_ok(at)
    assert at.caption[0].value.startswith("4 images, grouped by labels")


@pytest.mark.slow
def test_remove_settings_survive_leaving_the_page():
    at = uploaded_app()
    open_page(at, "remove")
    at.radio(key="remove_how").set_value("Blocks")
    at.run()
    at.multiselect(key=f"remove_blocks@{MODEL}").set_value(["SE_5_2"])
    at.radio(key="remove_mode").set_value("mean")
    at.run()
    open_page(at, "cost")
    open_page(at, "remove")
    assert at.radio(key="remove_how").value == "Blocks"
    assert at.multiselect(key=f"remove_blocks@{MODEL}").value == ["SE_5_2"]
    assert at.radio(key="remove_mode").value == "mean"



def _kept_widget_script() -> None:
    import streamlit as st

    from ui.widgets import keep_widget_values, kept

    keep_widget_values()
    if st.checkbox("Show the page", value=True, key="show"):
        st.slider("A new page's setting", 0, 10, 3, key=kept("new_page_setting"))
        st.slider("Not kept", 0, 10, 3, key="not_kept")


def test_a_widget_keyed_by_kept_survives_runs_that_do_not_draw_it_without_any_list():
    at = AppTest.from_function(_kept_widget_script, default_timeout=TIMEOUT).run()
    at.slider(key="new_page_setting").set_value(7).run()
    at.slider(key="not_kept").set_value(7).run()
    at.checkbox(key="show").uncheck().run()  # neither slider is drawn: Streamlit drops unkept widget values
    at.checkbox(key="show").check().run()
    assert at.slider(key="new_page_setting").value == 7
    assert at.slider(key="not_kept").value == 3

@pytest.mark.slow
def test_a_sweep_runs_only_when_asked_and_never_after_a_model_change(monkeypatch):
    calls: list[str] = []
    real = ablation.sweep

    def counting(loaded, *args, **kwargs):
        calls.append(loaded.name)
        return real(loaded, *args, **kwargs)

    monkeypatch.setattr(ablation, "sweep", counting)
    at = uploaded_app()
    open_page(at, "remove")
    at.multiselect(key="sweep_modes").set_value(["identity"])
    at.multiselect(key="sweep_kinds").set_value(["stage"])
    at.run()
    assert calls == [] and not at.get("plotly_chart")  # nothing runs before the button
    at.button(key="sweep_run").click()
    at.run()
    assert_ok(at)
    assert calls == [MODEL]
    assert len(at.get("plotly_chart")) == 1
    assert not at.get("progress") or all(p.value >= 1.0 for p in at.get("progress"))  # no bar left hanging
    assert any("images scored" in c.value for c in at.caption)

    at.selectbox(key="model_name").set_value(TWIN)
    at.run()
    assert_ok(at)
    assert calls == [MODEL]  # the model change did not start a sweep
    assert not at.get("plotly_chart")
    assert any("another model or other images" in i.value for i in at.info)

    at.selectbox(key="model_name").set_value(MODEL)  # back: the earlier result for this selection is shown
    at.run()
    assert calls == [MODEL] and len(at.get("plotly_chart")) == 1


@pytest.mark.slow
def test_export_lists_only_the_current_selection_and_tags_every_file():
    at = uploaded_app()
    open_page(at, "explore")
    open_page(at, "export")
    labels = [m.value for m in at.markdown]
    assert any(v.startswith("**Compare classes**") for v in labels)
    assert any(v.startswith("**Explore**") for v in labels)
    assert not any("<br>" in v for v in labels)  # titles are shown as in the app
    csv = next(b for b in at.get("download_button") if b.proto.label == "CSV")
    assert csv is not None

    at.selectbox(key="model_name").set_value(TWIN)
    at.run()
    open_page(at, "export")
    earlier = [e for e in at.expander
               if shown(e.label).startswith(f"{MODEL} — Upload by class: 5 files in 2 classes")]
    assert len(earlier) == 1, [e.label for e in at.expander]
    in_earlier = [shown(m.value) for m in earlier[0].markdown]
    everywhere = [shown(m.value) for m in at.markdown]
    in_any_expander = [shown(m.value) for e in at.expander for m in e.markdown]
    for name in ("**Compare classes**", "**Explore**"):
        # listed under the earlier selection, and not among the current selection's figures
        assert sum(v.startswith(name) for v in in_earlier) == 1, in_earlier
        assert sum(v.startswith(name) for v in everywhere) == sum(v.startswith(name) for v in in_any_expander)
    assert any(f"model {TWIN}" in shown(c.value) for c in at.caption)


def test_exported_tables_carry_model_weights_and_images():
    from ui.exports import Provenance, stamped_table

    prov = Provenance("m", "assets/m.safetensors (sha256 abc)", "Upload by class: 5 files in 2 classes", "d1")
    out = stamped_table(pd.DataFrame({"block": ["SE_2_1"], "x": [1.0]}), prov)
    assert list(out.columns[:3]) == ["model", "weights", "images"]
    back = pd.read_csv(io.StringIO(out.to_csv(index=False)))
    assert back.loc[0, "weights"] == prov.weights and back.loc[0, "images"].endswith("(set d1)")


@pytest.mark.slow
@requires(TFLITE.is_file() and IMAGENET.is_dir(), f"the shared model and ImageNet samples ({TFLITE}, {IMAGENET})")
def test_uploads_named_like_imagenet_files_are_scored():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.selectbox(key="model_name").set_value("tf_mobilenetv3_small_100")
    at.radio(key="image_source").set_value("Upload by class")
    at.run()
    assert_ok(at)
    at.text_input(key="class_name_0").set_value("sharks")  # not a model class: the file names label the images
    at.text_input(key="class_name_1").set_value("n02108915")  # a wnid: French bulldog
    sharks = ["n01484850_great_white_shark.JPEG", "n01491361_tiger_shark.JPEG"]
    uploader(at, 0).set_value([(f, (IMAGENET / f).read_bytes(), "image/jpeg") for f in sharks])
    at.run()
    uploader(at, 1).set_value([("my dog.jpg", (IMAGENET / "n02108915_French_bulldog.JPEG").read_bytes(),
                                "image/jpeg")])
    at.run()
    assert_ok(at)
    open_page(at, "remove")
    top1 = {m.label: m.value for m in at.metric}["Top-1 (full network)"]
    assert top1.endswith("%"), top1  # scored, not "n/a"
    assert not any("cannot be scored" in i.value for i in at.info)


def _explore_values(at: AppTest) -> list:
    spec = chart_spec(at)
    image_trace = next(t for t in spec["data"] if t.get("meta") == "image")
    return image_trace["y"]


@pytest.mark.slow
def test_large_runs_stream_statistics_and_keep_no_per_image_gates(monkeypatch):
    """Past KEEP_GATES_LIMIT images the run keeps predictions but not per-image gates: statistics are streamed
    (the same figure), Explore computes the chosen image's gates on demand, and grouping by prediction works."""
    from ui import engine, jobs, results

    def embedded() -> AppTest:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
        at.run()
        at.selectbox(key="model_name").set_value(MODEL)
        at.run()
        assert_ok(at)
        return at

    small = embedded()
    reference = chart_spec(small)
    open_page(small, "explore")
    reference_image = _explore_values(small)

    engine.engine().results.clear()
    monkeypatch.setattr(results, "KEEP_GATES_LIMIT", 10)
    large = embedded()
    assert results.run(large.session_state["selection"].model, large.session_state["selection"].images).gates == {}
    streamed = chart_spec(large)
    for a, b in zip(reference["data"], streamed["data"], strict=True):
        assert a["name"] == b["name"]
        assert a["y"] == pytest.approx(b["y"], abs=2e-3)  # float16 per-image gates vs streamed float32
    before = jobs.forward_count()
    open_page(large, "explore")
    assert jobs.forward_count() - before == 1  # one image through the network, not the set
    assert _explore_values(large) == pytest.approx(reference_image, abs=2e-3)
    open_page(large, "compare")
    large.checkbox(key="group_by_prediction").check()
    large.run()
    assert_ok(large)
    assert "grouped by predicted class" in large.caption[0].value


@pytest.mark.slow
def test_an_analysis_file_opens_without_model_or_images(tmp_path, monkeypatch):
    """A bundle written by `paper` opens from a server path: Compare draws Fig. 6, Depth gives its verdict, Export
    lists the bundle's tables; no model is loaded and pages that need a network say so."""
    from senet_viz import cli
    monkeypatch.setenv("SENET_VIZ_DATA_ROOTS", str(tmp_path))  # typed server paths must lie inside the roots

    out = tmp_path / "paper"
    assert cli.main(["paper", "--model", MODEL, "--images", str(SAMPLES), "--per-class", "3", "--out", str(out),
                     "--json"]) == 0
    bundle = out / "analysis.senetviz.zip"
    assert bundle.is_file()

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded while working from an analysis file")

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    monkeypatch.setattr(zoo, "load_model", no_model)
    at.radio(key="work_from").set_value("An analysis file")
    at.run()
    at.text_input(key="bundle_path").set_value(str(bundle))
    at.run()
    assert_ok(at)
    assert at.caption[0].value.startswith("30 images, grouped by labels")  # 3 per class
    spec = chart_spec(at)
    assert spec["layout"]["title"]["text"].startswith(f"Mean excitation per channel — {MODEL}")
    assert any(t["name"] == "all (n=30)" for t in spec["data"])
    open_page(at, "depth")
    assert any(m.value.startswith("**Verdict:**") for m in at.markdown)
    open_page(at, "export")
    assert any("analysis file" in c.value for c in at.caption)
    open_page(at, "remove")
    assert any("an analysis file holds statistics only" in i.value for i in at.info)


@pytest.mark.slow
def test_a_file_that_is_not_an_analysis_is_refused_and_the_app_keeps_serving(tmp_path, monkeypatch):
    monkeypatch.setenv("SENET_VIZ_DATA_ROOTS", str(tmp_path))
    bad = tmp_path / "not.senetviz.zip"
    bad.write_bytes(b"no zip here")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.radio(key="work_from").set_value("An analysis file")
    at.run()
    at.text_input(key="bundle_path").set_value(str(bad))
    at.run()
    assert not at.exception
    assert any("not a zip archive" in e.value for e in at.error)
    at.radio(key="work_from").set_value("A model and images")
    at.run()
    assert_ok(at)
    assert at.get("plotly_chart")  # the default analysis is back
