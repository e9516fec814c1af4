"""The app's data path for tail replay: the page's full pass keeps the last stage's activations, and the Remove
page's toggle replays only the tail from them (no ablated pass through the whole network), in both modes."""

from __future__ import annotations

from pathlib import Path

import pytest
from apptest_helpers import assert_ok, open_page
from conftest import EMBEDDED_MISSING, embedded_model_ready, requires
from streamlit.testing.v1 import AppTest

from senet_viz.analysis import ablation

MODEL = "se_resnet_fmnist"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = requires(embedded_model_ready(MODEL), EMBEDDED_MISSING)


@pytest.mark.slow
def test_the_remove_toggle_replays_the_tail_from_the_kept_activations(monkeypatch):
    replayed, ablated_passes = [], []
    real_replay, real_run = ablation.replay_kept, ablation.run_model

    def replay_spy(pass_, full, cut, *args, **kwargs):
        replayed.append((pass_.ablation.mode, cut.first_block))
        return real_replay(pass_, full, cut, *args, **kwargs)

    def run_spy(loaded, images, blocks=None, options=None, **kwargs):
        if options is not None and options.ablation is not None:
            ablated_passes.append(options.ablation.mode)
        return real_run(loaded, images, blocks, options, **kwargs)

    monkeypatch.setattr(ablation, "replay_kept", replay_spy)
    monkeypatch.setattr(ablation, "run_model", run_spy)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240)
    at.run()
    at.selectbox(key="model_name").set_value(MODEL)
    at.run()
    at = open_page(at, "remove", "Remove SE blocks")
    at.slider(key="remove_k").set_value(2)  # the last stage's two blocks (another test's k=1 may be cached)
    at.toggle(key="remove_on").set_value(True)
    at.run()
    assert_ok(at)
    at.radio(key="remove_mode").set_value("mean")
    at.run()
    assert_ok(at)
    captions = " ".join(c.value for c in at.caption)
    assert replayed == [("identity", "SE_5_1"), ("mean", "SE_5_1")], captions
    assert "from the full pass's kept activations" in captions.replace("\\", "")
    assert ablated_passes == []
