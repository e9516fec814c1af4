"""The hub download path, exercised against a local HTTP server (no test reaches the internet)."""

from __future__ import annotations

import functools
import http.server
import threading
import time

import pytest
import torch
from safetensors.torch import save_file

from senet_viz.models import download, registry, zoo


@pytest.fixture
def served(tmp_path):
    """A weights file of a random torchvision MobileNetV3-Small served on a loopback port."""
    root = tmp_path / "srv"
    root.mkdir()
    model = registry.get_spec("mobilenet_v3_small").build()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "w.safetensors"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/w.safetensors", root / "w.safetensors", model
    finally:
        server.shutdown()


@pytest.mark.slow
def test_download_reports_progress_and_is_found_next_time(served, tmp_path, monkeypatch):
    url, source, model = served
    monkeypatch.setenv("SENET_VIZ_CACHE", str(tmp_path / "cache"))
    calls: list[tuple[int, int]] = []
    path = download.download_weights("mobilenet_v3_small", progress=lambda d, t: calls.append((d, t)), url=url,
                                chunk=64 * 1024)
    assert path.read_bytes() == source.read_bytes()
    assert len(calls) > 3  # several chunks, each reported
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert calls[-1] == (source.stat().st_size, source.stat().st_size)
    assert not list(path.parent.glob("*.part"))
    assert download.local_weights_file("mobilenet_v3_small") == path
    assert download.weights_status("mobilenet_v3_small") is download.WeightsStatus.FILE  # known at once, same process
    loaded = zoo.load_model("mobilenet_v3_small", device="cpu")
    assert loaded.weights_source == str(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)


def test_download_offline_fails_fast_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SENET_VIZ_CACHE", str(tmp_path / "cache"))
    start = time.monotonic()
    with pytest.raises(download.WeightsUnavailableError, match="--weights FILE"):
        download.download_weights("mobilenet_v3_small", url="http://127.0.0.1:9/w.safetensors")
    assert time.monotonic() - start < 10
    assert not (tmp_path / "cache" / "weights").exists() or not any((tmp_path / "cache" / "weights").iterdir())


def test_weights_url_names_the_hub_file():
    assert download.weights_url("mobilenet_v3_small").endswith(".pth")
    assert download.weights_url("tf_mobilenetv3_small_100").endswith("model.safetensors")
    assert download.weights_url("legacy_seresnet50").endswith(".pth")
    with pytest.raises(download.WeightsUnavailableError):
        download.weights_url("se_resnet_fmnist")
