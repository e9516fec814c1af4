"""``python -m ui.serve [streamlit options]``: ``streamlit run app.py`` (what ``make run`` starts), with the app's
imports made while the server starts instead of in the first visitor's script run, and its first page opened once
by the server itself.

Streamlit runs nothing of the app before a browser connects, so on a plain ``streamlit run app.py`` the first page
waits for torch, timm, pandas, plotly and the project's modules to import (seconds on two cores) before it can draw
anything, and then for the embedded model to load and the first figure to be built. Here a background thread
imports them as soon as Streamlit's runtime exists (so that modules that decorate with ``st.cache_data`` at import
see it), then opens the app's first page once over the server's own websocket, as a browser does (:func:`warm_up`):
the embedded model, its precomputed analysis and the first page's figures land in the caches every session shares
(``ui.memo``), so the first visitor's script run finds them built. ``SENET_VIZ_WARM_UP=0`` skips that visit.

The browser, too, starts on the first chart's code early (:func:`early_chart_page`): Streamlit loads its Plotly chart
module (4.7 MB, about a second to evaluate on two cores) only when the first chart's message arrives, after the
script has run. The page served here fetches that module and its imports while the page loads and evaluates it while
the server runs the script. ``SENET_VIZ_EARLY_CHARTS=0`` serves Streamlit's page unchanged.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app.py"
#: What the first page (Compare classes on the embedded model) imports, heaviest first.
PRELOAD = ("torch", "timm", "pandas", "plotly.graph_objects", "senet_viz.models.zoo", "senet_viz.analysis.stats",
           "senet_viz.analysis.chance", "senet_viz.plots", "ui.sidebar", "ui.results", "ui.common", "ui.channels",
           "ui.exports", "senet_viz.plots.depth", "senet_viz.analysis.verdict")
_log = logging.getLogger(__name__)


def preload(timeout_s: float = 60.0) -> None:
    """Import :data:`PRELOAD` once Streamlit's runtime exists (waits up to ``timeout_s`` for it), then open the first
    page once (:func:`warm_up`) unless ``SENET_VIZ_WARM_UP=0``."""
    from streamlit import runtime

    deadline = time.monotonic() + timeout_s
    while not runtime.exists():
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)
    started = time.perf_counter()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the app's own run reports a broken import where it matters
            _log.warning("senet-viz: could not preload %s", name, exc_info=True)
    # on the server's output, beside Streamlit's own lines (benchmarks/interactions.py waits for it)
    print(f"  senet-viz: the app's modules are loaded ({time.perf_counter() - started:.1f} s)", flush=True)
    if os.environ.get("SENET_VIZ_WARM_UP", "1") == "0":
        return
    started = time.perf_counter()
    try:
        status = warm_up(stream_url())
    except Exception as exc:  # noqa: BLE001 - a failed warm-up only leaves the first visitor the work
        print(f"  senet-viz: could not open the first page ahead of visitors: {type(exc).__name__}: {exc}",
              flush=True)
        return
    print(f"  senet-viz: the first page is ready ({time.perf_counter() - started:.1f} s, {status})", flush=True)


def stream_url() -> str:
    """The websocket URL of this server's own app, from Streamlit's configuration (address, port, base path)."""
    from streamlit import config

    address = config.get_option("server.address") or "127.0.0.1"
    if address in ("0.0.0.0", "::"):  # every interface: this machine's own is one of them
        address = "127.0.0.1"
    if ":" in address:
        address = f"[{address}]"
    base = (config.get_option("server.baseUrlPath") or "").strip("/")
    scheme = "wss" if config.get_option("server.sslCertFile") else "ws"
    return f"{scheme}://{address}:{config.get_option('server.port')}/{base + '/' if base else ''}_stcore/stream"


def warm_up(url: str, timeout_s: float = 300.0) -> str:
    """Open the app's first page once over the websocket at ``url``, as a browser's first visit does (a
    ``rerun_script`` request with no page, query or widget state), and wait until its script run has finished;
    return how it finished ("successfully", with the number of exceptions the page showed if any). Retries the
    connection until the server listens (up to ``timeout_s`` in all)."""
    import ssl

    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.sync.client import connect

    deadline = time.monotonic() + timeout_s
    context = None
    if url.startswith("wss:"):  # the server's own certificate, reached by address: not a public name to verify
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    while True:
        try:
            socket = connect(url, subprotocols=["streamlit"], ssl=context, open_timeout=10, max_size=None)
            break
        except OSError:  # not listening yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    with socket:
        request = BackMsg()
        request.rerun_script.query_string = ""
        socket.send(request.SerializeToString())
        exceptions = 0
        while True:
            message = ForwardMsg()
            message.ParseFromString(socket.recv(timeout=max(1.0, deadline - time.monotonic())))
            kind = message.WhichOneof("type")
            if kind == "delta" and message.delta.WhichOneof("type") == "new_element":
                exceptions += message.delta.new_element.WhichOneof("type") == "exception"
            elif kind == "script_finished":
                status = ForwardMsg.ScriptFinishedStatus.Name(message.script_finished)
                if status != "FINISHED_EARLY_FOR_RERUN":  # a rerun the script asked for follows
                    status = status.removeprefix("FINISHED_").lower()
                    return f"{status}, {exceptions} exception(s) on the page" if exceptions else status


# A module's static imports, at the start of a bundled chunk: `import{a as b}from"./x.js";` or `import"./x.js";`
_STATIC_IMPORT = re.compile(r'\s*import\s*(?:[^;"]*?from\s*)?"\./([^"/]+\.js)"\s*;')
# Starts the chart module's evaluation once the server has answered the page's websocket (the script's run request
# has gone out, so the evaluation overlaps the run instead of delaying it); on the load event + 3 s at the latest.
_EARLY_IMPORT = """<script>(() => {
  let started = false;
  const load = () => {
    if (started) return;
    started = true;
    window.__earlyChartModule = [performance.now()];  // [asked, evaluated]: benchmarks/interactions.py reads it
    import("%(url)s").then(() => window.__earlyChartModule.push(performance.now()), () => {});
  };
  const NativeWebSocket = window.WebSocket;
  window.WebSocket = class extends NativeWebSocket {
    constructor(...args) { super(...args); this.addEventListener("message", () => setTimeout(load, 0), {once: true}); }
  };
  addEventListener("load", () => setTimeout(load, 3000));
})();</script>"""


def static_imports(chunk: Path) -> list[str]:
    """The file names a bundled ES module imports statically (its leading ``import`` statements)."""
    text = chunk.read_text(encoding="utf-8", errors="replace")[:50_000]
    names, pos = [], 0
    while match := _STATIC_IMPORT.match(text, pos):
        names.append(match.group(1))
        pos = match.end()
    return names


def early_chart_page(static_dir: Path, into: Path) -> Path | None:
    """Streamlit's static folder as ``into``: links to its files, but an ``index.html`` that preloads the Plotly
    chart module and the modules it imports (``<link rel="modulepreload">``, fetched while the page loads) and
    evaluates it once the server answers the page's websocket. None (nothing written) when this Streamlit's
    folder does not have the layout expected (one ``static/js/PlotlyChart.*.js``, an ``index.html`` with a
    ``</head>``): the page is then served unchanged."""
    js = static_dir / "static" / "js"
    chunks = sorted(js.glob("PlotlyChart.*.js"))
    index = static_dir / "index.html"
    if len(chunks) != 1 or not index.is_file():
        return None
    html = index.read_text(encoding="utf-8")
    if "</head>" not in html:
        return None
    seen, todo = set(), [chunks[0].name]
    while todo:  # the module's import graph: a dynamic import() evaluates only once all of it is fetched
        name = todo.pop()
        if name not in seen and (js / name).is_file():
            seen.add(name)
            todo.extend(static_imports(js / name))
    links = "".join(f'<link rel="modulepreload" crossorigin href="./static/js/{name}">'
                    for name in sorted(seen) if f"./static/js/{name}\"" not in html)
    into.mkdir(parents=True, exist_ok=True)
    for entry in static_dir.iterdir():
        if entry.name != "index.html":
            (into / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    early = _EARLY_IMPORT % {"url": f"./static/js/{chunks[0].name}"}
    (into / "index.html").write_text(html.replace("</head>", f"{links}{early}</head>", 1), encoding="utf-8")
    return into


def serve_early_chart_page() -> bool:
    """Point Streamlit's static folder at :func:`early_chart_page`'s copy (a temporary folder removed at exit)
    unless ``SENET_VIZ_EARLY_CHARTS=0``; whether it did."""
    if os.environ.get("SENET_VIZ_EARLY_CHARTS", "1") == "0":
        return False
    from streamlit import file_util

    folder = Path(tempfile.mkdtemp(prefix="senet-viz-static-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    try:
        static = early_chart_page(Path(file_util.get_static_dir()), folder / "static")
    except OSError as exc:  # e.g. no symlinks on this file system: Streamlit's own page
        _log.warning("senet-viz: serving Streamlit's page unchanged: %s", exc)
        return False
    if static is None:
        return False
    file_util.get_static_dir = lambda: str(static)  # read when the server builds its routes, after this
    return True


def main(argv: list[str]) -> None:
    serve_early_chart_page()
    threading.Thread(target=preload, name="senet-viz-preload", daemon=True).start()
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(APP), *argv]
    cli.main()


if __name__ == "__main__":
    main(sys.argv[1:])
