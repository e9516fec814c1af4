"""ui.serve opens the app's first page once over its own websocket, as a browser does, before any visitor comes
(the embedded model, its precomputed analysis and the first figures land in the caches every session shares)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_browser import _free_port

from ui import serve

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("options", "url"), [
    ({"server.address": "", "server.port": 8501}, "ws://127.0.0.1:8501/_stcore/stream"),
    ({"server.address": "0.0.0.0", "server.port": 9000}, "ws://127.0.0.1:9000/_stcore/stream"),
    ({"server.address": "::1", "server.port": 9000}, "ws://[::1]:9000/_stcore/stream"),
    ({"server.address": "localhost", "server.baseUrlPath": "/lab/senet/"}, "ws://localhost:8501/lab/senet/_stcore/stream"),
    ({"server.sslCertFile": "/etc/cert.pem"}, "wss://127.0.0.1:8501/_stcore/stream"),
])
def test_the_stream_url_follows_streamlits_configuration(monkeypatch, options, url):
    from streamlit import config

    defaults = {"server.address": "", "server.port": 8501, "server.baseUrlPath": "", "server.sslCertFile": None}
    monkeypatch.setattr(config, "get_option", lambda key: {**defaults, **options}[key])
    assert serve.stream_url() == url


def _preload_with(monkeypatch, env: str | None, warm_up) -> None:
    from streamlit import runtime

    monkeypatch.setattr(runtime, "exists", lambda: True)
    monkeypatch.setattr(serve, "PRELOAD", ())
    monkeypatch.setattr(serve, "stream_url", lambda: "ws://127.0.0.1:1/_stcore/stream")
    monkeypatch.setattr(serve, "warm_up", warm_up)
    if env is None:
        monkeypatch.delenv("SENET_VIZ_WARM_UP", raising=False)
    else:
        monkeypatch.setenv("SENET_VIZ_WARM_UP", env)


def test_preload_opens_the_first_page_unless_turned_off(monkeypatch, capsys):
    calls: list[str] = []
    _preload_with(monkeypatch, None, lambda url: calls.append(url) or "successfully")
    serve.preload()
    assert calls == ["ws://127.0.0.1:1/_stcore/stream"]
    assert "the first page is ready" in capsys.readouterr().out

    calls.clear()
    _preload_with(monkeypatch, "0", lambda url: calls.append(url) or "successfully")
    serve.preload()
    assert calls == []
    assert "first page" not in capsys.readouterr().out


def test_a_failed_warm_up_is_said_and_leaves_the_server_alone(monkeypatch, capsys):
    def refuse(url: str) -> str:
        raise ConnectionRefusedError("nobody listens")

    _preload_with(monkeypatch, None, refuse)
    serve.preload()  # no exception: the first visitor does the work instead
    out = capsys.readouterr().out
    assert "could not open the first page ahead of visitors: ConnectionRefusedError: nobody listens" in out


def start_ui_serve(log: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """`python -m ui.serve` (what `make run` starts) on a free port of 127.0.0.1 with ``env``, its output to ``log``:
    the process and its port."""
    port = _free_port()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ui.serve", "--server.headless", "true",
                                 "--server.fileWatcherType", "none", "--server.port", str(port),
                                 "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    return proc, port


@pytest.mark.slow
def test_a_served_app_opens_its_first_page_itself_and_answers_a_second_visit(tmp_path):
    """`python -m ui.serve` (what `make run` starts) on a free port: its log says the first page ran without an
    exception on screen, and a second visit over the websocket (as a browser's) finishes the same way."""
    log = tmp_path / "serve.log"
    proc, port = start_ui_serve(log, {k: v for k, v in os.environ.items() if k != "SENET_VIZ_WARM_UP"})
    try:
        deadline = time.monotonic() + 240
        while "senet-viz: the first page is ready" not in log.read_text():
            text = log.read_text()
            assert "could not open the first page" not in text, text[-3000:]
            assert proc.poll() is None, text[-3000:]
            assert time.monotonic() < deadline, f"no warm-up line in 240 s:\n{text[-3000:]}"
            time.sleep(0.2)  # polls the server's log
        ready = next(line for line in log.read_text().splitlines() if "the first page is ready" in line)
        assert ready.endswith(", successfully)"), ready  # no exception on the page it drew
        assert serve.warm_up(f"ws://127.0.0.1:{port}/_stcore/stream", timeout_s=120) == "successfully"
    finally:
        proc.terminate()
        proc.wait(30)
