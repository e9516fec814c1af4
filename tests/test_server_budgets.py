"""Per-server byte budgets of the shared caches, failed model loads remembered, and hub downloads only on a
button press with their size shown and a disk budget (issue 18, items 3 and 5).

Values of known sizes go through :class:`ui.caches.ResultCache` and the model cache; loads are counted through a
stand-in ``zoo.load_model``; downloads go to a local HTTP server started here (no test reaches the internet), which
records every request it answers.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from apptest_helpers import app_session, assert_ok
from safetensors.torch import save_file
from torch import nn

from senet_viz.lru import LRU, value_bytes
from senet_viz.models import download, registry, zoo
from senet_viz.models.loaded import LoadedModel, NoGatesError
from ui import model_cache
from ui.caches import ResultCache
from ui.engine import Engine, ThreadPolicy

ROOT = Path(__file__).resolve().parents[1]
KB = 1000


def array(n: int) -> np.ndarray:
    return np.zeros(n, dtype=np.uint8)  # nbytes == n


def computing(calls: list, value):
    def compute(progress):
        calls.append(value)
        return value
    return compute


# ------------------------------------------------------------------------------------------ sizes


def test_value_bytes_sums_arrays_tensors_frames_and_objects_counting_shared_ones_once():
    shared = array(5 * KB)

    @dataclass
    class Pass:
        gates: dict
        logits: torch.Tensor
        labels: np.ndarray

    result = Pass(gates={"SE_2_1": array(3 * KB), "SE_2_2": shared}, logits=torch.zeros(250, dtype=torch.float32),
                  labels=shared)  # the same array twice: held once
    assert 8 * KB + 1000 <= value_bytes(result) < 8 * KB + 1000 + 2 * KB  # arrays + tensor + small overhead
    frame = pd.DataFrame({"x": np.zeros(1000, dtype=np.float64), "name": ["a" * 40] * 1000})
    assert value_bytes(frame) >= 8 * KB + 40 * KB  # deep: the strings count
    assert value_bytes(nn.Linear(100, 10)) == (100 * 10 + 10) * 4
    assert value_bytes(torch.zeros(10, device="meta")) == 0


# ------------------------------------------------------------------------------------------ results


def test_the_result_cache_evicts_the_least_recently_used_by_bytes_across_kinds():
    calls: list = []
    cache = ResultCache({"run": 10, "sweep": 10}, max_bytes=3 * KB)
    a = cache.fetch("run", "a", computing(calls, array(KB)))
    cache.fetch("run", "b", computing(calls, array(KB)))
    cache.fetch("sweep", "c", computing(calls, array(KB)))
    assert cache.bytes == 3 * KB and len(cache) == 3  # exactly the budget: all kept
    assert cache.fetch("run", "a", computing(calls, "again")) is a  # a hit: "a" is now the most recently used
    cache.fetch("sweep", "d", computing(calls, array(KB)))  # over by 1 kB: "b" goes (of another kind than "d")
    assert cache.keys("run") == ["a"] and cache.keys("sweep") == ["c", "d"] and cache.bytes == 3 * KB
    cache.fetch("run", "e", computing(calls, array(2 * KB)))  # 2 kB more: the two least recently used go
    assert cache.keys("run") == ["e"] and cache.keys("sweep") == ["d"] and cache.bytes == 3 * KB
    assert len(calls) == 5


def test_a_value_larger_than_the_whole_budget_is_returned_but_not_kept():
    calls: list = []
    cache = ResultCache({"run": 10}, max_bytes=3 * KB)
    cache.fetch("run", "small", computing(calls, array(KB)))
    big = cache.fetch("run", "big", computing(calls, array(4 * KB)))
    assert big.nbytes == 4 * KB  # served to the one who asked ...
    assert cache.keys("run") == ["small"] and cache.bytes == KB  # ... not kept, and nothing else evicted for it
    cache.fetch("run", "big", computing(calls, array(4 * KB)))
    assert len(calls) == 3  # asked again: computed again


def test_the_lru_memo_can_be_bounded_by_bytes():
    memo = LRU(10, max_bytes=2 * KB)
    assert memo.put("a", array(KB)) and memo.put("b", array(KB))
    memo.get("a")
    assert memo.put("c", array(KB)) and memo.keys() == ["a", "c"] and memo.bytes == 2 * KB
    assert not memo.put("d", array(3 * KB)) and memo.keys() == ["a", "c"]
    memo.put("a", array(2 * KB))  # replaced: its old size leaves with it
    assert memo.keys() == ["a"] and memo.bytes == 2 * KB


def test_the_engine_results_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("SENET_VIZ_RESULTS_MB", "3")
    before = torch.get_num_threads()
    engine = Engine(ThreadPolicy(cores=1, threads=1, concurrent=1))
    try:
        assert engine.results.max_bytes == 3 << 20
    finally:
        engine.pool.shutdown()
        torch.set_num_threads(before)


def test_the_pixel_cache_takes_its_size_from_the_environment(monkeypatch):
    # a fresh import of ui/engine.py under the variable (no subprocess: it would pay seconds for importing torch);
    # the copy has its own name in sys.modules (dataclasses look it up) until the test ends; ui.engine is untouched
    monkeypatch.setenv("SENET_VIZ_PIXELS_MB", "3")
    spec = importlib.util.spec_from_file_location("engine_fresh_import", ROOT / "ui" / "engine.py")
    fresh = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, fresh)
    spec.loader.exec_module(fresh)
    assert fresh.PIXELS.max_bytes == 3 << 20


# ------------------------------------------------------------------------------------------ models


def fake_model(name: str, n_params: int) -> LoadedModel:
    return LoadedModel(name=name, model=nn.Linear(n_params - 1, 1), transform=None, class_names=["a"],
                           wnids=None, blocks=[], device=torch.device("cpu"), weights_source="test",
                           weights_id=name)


@pytest.fixture
def fresh_models(monkeypatch):
    """An empty model cache and failure memo, and zoo.load_model replaced by a counting stand-in: a name
    ``m<k>`` loads a model of k x 1,000 float parameters (4 kB each); ``nogates`` raises NoGatesError."""
    monkeypatch.setattr(model_cache, "_models", None)
    monkeypatch.setattr(model_cache, "FAILED_LOADS", LRU(64))
    calls: list[tuple] = []

    def load_model(name, weights=None, device="auto", *, options=None, download=True, max_param_bytes=None):
        calls.append((name, weights, download))
        if name == "nogates":
            raise NoGatesError("nogates has no channel gate to look at")
        loaded = fake_model(name, int(name[1:]) * 1000)
        size = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
        if max_param_bytes is not None and size > max_param_bytes:
            raise zoo.ModelTooLargeError(f"{name} is too large")
        return loaded

    monkeypatch.setattr(zoo, "load_model", load_model)
    return calls


def test_the_model_cache_is_bounded_by_the_models_parameter_bytes(fresh_models, monkeypatch):
    monkeypatch.setenv("SENET_VIZ_MODELS_MB", str(10 * 4 * KB / 2**20))  # room for 10,000 float parameters
    cache = model_cache.model_cache()
    assert cache.max_bytes == 40 * KB
    four = model_cache.get_model("m4", device="cpu")
    assert model_cache.get_model("m4", device="cpu") is four  # shared, loaded once
    model_cache.get_model("m5", device="cpu")
    assert len(fresh_models) == 2 and cache.bytes == 36 * KB
    model_cache.get_model("m4", device="cpu")  # a use: m5 is now the least recently used
    model_cache.get_model("m3", device="cpu")  # 48 kB > 40 kB: m5 goes, not m4
    assert [key[0] for key in cache.keys("model")] == ["m4", "m3"]
    assert all(download is False for _, _, download in fresh_models)  # the app never lets a load download
    with pytest.raises(zoo.ModelTooLargeError):
        model_cache.get_model("m11", device="cpu")  # over the whole budget: refused, the cached ones stay
    assert [key[0] for key in cache.keys("model")] == ["m4", "m3"]


def test_a_failed_load_is_remembered_and_a_changed_weights_file_is_tried_again(fresh_models, tmp_path):
    for _ in range(3):  # three reruns, one load
        with pytest.raises(NoGatesError, match="nogates has no channel gate"):
            model_cache.get_model("nogates", device="cpu")
    assert len(fresh_models) == 1

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"first")
    for _ in range(2):
        with pytest.raises(NoGatesError):
            model_cache.get_model("nogates", str(weights), device="cpu")
    assert len(fresh_models) == 2  # another key (the file's digest): tried once
    weights.write_bytes(b"second, longer")
    with pytest.raises(NoGatesError):
        model_cache.get_model("nogates", str(weights), device="cpu")
    assert len(fresh_models) == 3  # a changed file is a new key


def test_a_remembered_failure_holds_no_traceback():
    def fail():
        big = torch.zeros(10)  # noqa: F841 - a local a traceback would keep alive
        raise NoGatesError("no gates")

    try:
        fail()
    except NoGatesError as exc:
        kept = model_cache.bare_error(exc)
    assert type(kept) is NoGatesError and str(kept) == "no gates"
    assert kept.__traceback__ is None and kept.__context__ is None and kept.__cause__ is None


# ------------------------------------------------------------------------------------------ downloads


class Recording(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; records (method, path) of every request; ``/nolength/...`` is sent without a length."""

    requests: list[tuple[str, str]]

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self.requests.append(("HEAD", self.path))
        super().do_HEAD()

    def do_GET(self) -> None:  # noqa: N802
        self.requests.append(("GET", self.path))
        if self.path.startswith("/nolength/"):
            data = Path(self.directory, self.path.rpartition("/")[2]).read_bytes()
            self.protocol_version = "HTTP/1.0"
            self.send_response(200)
            self.end_headers()
            self.wfile.write(data)
            return
        super().do_GET()


class Quiet(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # a client that stops reading (a refused download)
        pass


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A local 'hub' serving random MobileNetV3-Small weights, with SENET_VIZ_CACHE and TORCH_HOME empty, so the
    model's weights are on the hub only. Yields (url, file, requests)."""
    root = tmp_path / "srv"
    root.mkdir()
    model = registry.get_spec("mobilenet_v3_small").build()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "w.safetensors"))
    requests: list[tuple[str, str]] = []
    handler = functools.partial(type("Handler", (Recording,), {"requests": requests}), directory=str(root))
    server = Quiet(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("SENET_VIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/w.safetensors", root / "w.safetensors", requests
    finally:
        server.shutdown()
        download.forget_weights_status()


def test_the_download_size_is_asked_with_a_head_request(hub):
    url, source, requests = hub
    assert download.download_size("mobilenet_v3_small", url=url) == source.stat().st_size
    assert requests == [("HEAD", "/w.safetensors")]  # the file itself was not fetched


@pytest.mark.slow
def test_a_download_over_the_disk_budget_is_refused_and_leaves_nothing(hub):
    url, source, requests = hub
    size = source.stat().st_size
    folder = download.download_dir()
    folder.mkdir(parents=True)
    (folder / "earlier.safetensors").write_bytes(b"x" * 1000)  # what the folder already holds counts
    with pytest.raises(download.DownloadBudgetError, match="SENET_VIZ_DOWNLOAD_MB"):
        download.download_weights("mobilenet_v3_small", url=url, max_bytes=size + 999)
    no_length = url.replace("/w.safetensors", "/nolength/w.safetensors")
    with pytest.raises(download.DownloadBudgetError):  # no Content-Length: stopped once past the budget
        download.download_weights("mobilenet_v3_small", url=no_length, max_bytes=size + 999, chunk=64 * 1024)
    assert sorted(p.name for p in folder.iterdir()) == ["earlier.safetensors"]  # no partial file left
    path = download.download_weights("mobilenet_v3_small", url=url, max_bytes=size + 1000)  # exactly fits
    assert path.read_bytes() == source.read_bytes()


@pytest.mark.slow
def test_the_app_downloads_nothing_without_the_button_and_shows_the_size(hub, monkeypatch):
    url, source, requests = hub
    # Every way the library could fetch these weights points at the local hub, so a fetch would be seen there.
    monkeypatch.setattr(download, "weights_url", lambda name: url)
    monkeypatch.setattr(download, "hub_url", lambda spec: url)
    import torchvision.models._api as tv_api

    real_fetch = tv_api.load_state_dict_from_url
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", lambda _url, *a, **k: real_fetch(url, *a, **k))
    monkeypatch.setattr(model_cache, "FAILED_LOADS", LRU(64))
    assert download.weights_status("mobilenet_v3_small") is download.WeightsStatus.HUB_ONLINE

    at = app_session("mobilenet_v3_small")
    assert not at.exception, [e.message for e in at.exception]
    shown = " ".join(str(e.value) for e in [*at.info, *at.caption])
    assert "download needed" in shown
    size_mb = f"{source.stat().st_size / 1e6:,.1f} MB"
    button = at.button(key="download_weights")
    assert size_mb in button.label and size_mb in shown
    at.run()  # another rerun: still nothing fetched
    assert all(method == "HEAD" for method, _ in requests), requests  # the size only, never the file

    button = at.button(key="download_weights")
    button.click()
    at.run()
    assert_ok(at)
    assert [r for r in requests if r[0] == "GET"] == [("GET", "/w.safetensors")]  # one fetch, on the press
    assert download.local_weights_file("mobilenet_v3_small").read_bytes() == source.read_bytes()
    assert "download needed" not in " ".join(str(e.value) for e in at.info)


@pytest.mark.slow
def test_the_button_is_disabled_when_the_download_would_exceed_the_disk_budget(hub, monkeypatch):
    url, source, requests = hub
    monkeypatch.setattr(download, "weights_url", lambda name: url)
    monkeypatch.setenv("SENET_VIZ_DOWNLOAD_MB", "1")  # the file is ~10 MB
    at = app_session("mobilenet_v3_small")
    assert not at.exception
    assert at.button(key="download_weights").disabled
    assert any("SENET_VIZ_DOWNLOAD_MB" in w.value for w in at.warning)
    assert not [r for r in requests if r[0] == "GET"]
