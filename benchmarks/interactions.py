"""Click-to-idle times of the dashboard in a real browser, with tail replay on and off (issue 21).

Starts the server twice as `make run` does (`python -m ui.serve`, i.e. `streamlit run app.py` with the app's imports
preloaded; `--plain`: `streamlit run app.py` itself), on ports 8611 and 8612, the second with
SENET_VIZ_TAIL_REPLAY=0, drives
each in Chromium (Playwright) through one fixed script and prints, per step, the median click-to-idle time and the
median server-side script time, the two servers side by side:

1. the first chart on a fresh server (the embedded model's Compare page), from the request of the page and from the
   page's load event (opened once ui.serve says the app's modules are loaded and it has opened the first page
   itself, as for a visitor who opens the printed URL a moment later; `--no-warm-up`: without that visit);
2. MobileNetV3-Small on the shared ImageNet samples (every class: 900 images): its first analysis (informative);
3. view-only changes on Compare classes: a class removed from / added back to Fig. 6, the four views in turn
   (Fig. 6, Fig. 7, distributions, heatmap), another class on Fig. 7;
4. page switches (Explore, Depth, Remove, Cost, Compare) and a cached model switch (the embedded model and back);
5. Remove SE blocks: the last stage removed (identity), then frozen (mean); a sweep (by default: mode identity,
   the "stage" configurations).

Timing, measured in the page itself (``performance.now()``): a MutationObserver records every change of Streamlit's
``data-test-script-state`` attribute (``running`` while a script run is in progress on the server, ``notRunning``
once the server has reported it finished) and a capture listener records every pointer / key input. Click-to-idle
is from the last input before the run started to the last ``notRunning`` once the app has stayed idle for
``--quiet`` ms (a rerun chain counts whole); "server" is the time spent in ``running`` (the script's run as the
browser sees it: the server's run time plus the websocket's latency, on localhost well under a millisecond).

    .venv/bin/python benchmarks/interactions.py                  # both servers, 5 repeats of each view step
    .venv/bin/python benchmarks/interactions.py --only on --repeats 3 --sweep-kinds last
    .venv/bin/python benchmarks/interactions.py --screenshots /tmp/shots --cancel   # + a cancelled second sweep
    .venv/bin/python benchmarks/interactions.py --first-only 5 --only on [--no-warm-up]  # the first chart, 5 servers
    .venv/bin/python benchmarks/interactions.py --first-only 5 --only on --early-charts both  # early module or not

Note the machine's load (``uptime``) beside the numbers: every step is CPU-bound on the server.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "data" / "imagenet-samples"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1600, "height": 1100}
MODEL = "tf_mobilenetv3_small_100"
EMBEDDED = "se_resnet_fmnist"
VIEWS = ["Paper Fig. 6", "Paper Fig. 7", "Per-stage distributions", "Class × channel heatmap"]
PAGES = ["Explore", "Depth", "Remove SE blocks", "Cost", "Compare classes"]

# Recorded in the page before any of its scripts: script-state changes, websocket messages from the server and user
# inputs, each with performance.now(). A fast run may never show "running" (React batches the updates of a run whose
# messages arrive together), so a run is also seen by the messages it sends.
RECORDER = """
window.__states = []; window.__inputs = []; window.__msgs = [];
new MutationObserver(ms => { for (const m of ms) window.__states.push(
    [performance.now(), m.target.getAttribute('data-test-script-state')]); })
  .observe(document, {attributes: true, subtree: true, attributeFilter: ['data-test-script-state']});
for (const kind of ['pointerdown', 'mousedown', 'keydown'])
  window.addEventListener(kind, () => window.__inputs.push(performance.now()), true);
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener('message', () => window.__msgs.push(performance.now()));
  }
};
window.__chart = null;  // when a Plotly chart's SVG was first seen laid out (a size above 0) in the page
const chartWatch = setInterval(() => {
  for (const svg of document.querySelectorAll('.js-plotly-plot .main-svg')) {
    const box = svg.getBoundingClientRect();
    if (box.width > 0 && box.height > 0) { window.__chart = performance.now(); clearInterval(chartWatch); }
  }
}, 10);
"""
STARTED = """(mark) => window.__msgs.some(t => t >= mark) ||
  window.__states.some(e => e[0] >= mark && e[1] === 'running')"""
# True once a run answered the action, the app is idle and nothing changed for `quiet` ms.
SETTLED = """([mark, quiet]) => {
  const msgs = window.__msgs.filter(t => t >= mark), s = window.__states.filter(e => e[0] >= mark);
  if (!msgs.length) return false;
  const app = document.querySelector("[data-testid='stApp']");
  if (!app || app.getAttribute('data-test-script-state') === 'running') return false;
  const last = Math.max(msgs[msgs.length - 1], s.length ? s[s.length - 1][0] : 0);
  return performance.now() - last > quiet;
}"""
START_TIMEOUT_MS = 30_000
# [click to idle, server]: from the last input before the server's first answer to the last message or state change;
# server: from its first message to its last (the run as the browser sees it, websocket latency included).
TIMES = """(mark) => {
  const msgs = window.__msgs.filter(t => t >= mark), s = window.__states.filter(e => e[0] >= mark);
  const first = msgs[0];
  const inputs = window.__inputs.filter(t => t >= mark && t <= first);
  const start = inputs.length ? inputs[inputs.length - 1] : mark;
  const idle = Math.max(msgs[msgs.length - 1], ...s.filter(e => e[1] === 'notRunning').map(e => e[0]));
  return [idle - start, msgs[msgs.length - 1] - first];
}"""


class Server:
    """`streamlit run app.py` on ``port`` with ``env`` added to this process's environment."""

    def __init__(self, port: int, env: dict[str, str], log: Path, plain: bool = False) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log.open("w")
        # as `make run` starts it (ui/serve.py: the app's imports made while the server starts), or plain
        start = ["-m", "streamlit", "run", "app.py"] if plain else ["-m", "ui.serve"]
        self.proc = subprocess.Popen(
            [sys.executable, *start, "--server.headless", "true",
             "--server.fileWatcherType", "none", "--server.port", str(port), "--server.address", "127.0.0.1",
             "--browser.gatherUsageStats", "false"], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, **env})
        deadline = time.monotonic() + 180
        while not self._healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start; see {log}")
            time.sleep(0.2)
        self.preloaded = None if plain else self._preloaded(log, deadline, env)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                return r.read().decode().strip() == "ok"
        except OSError:
            return False

    def _preloaded(self, log: Path, deadline: float, env: dict[str, str]) -> str | None:
        """ui.serve's lines saying the app's imports are done and its first page was opened once (the first visitor
        of a server started a moment ago finds them done), or None when they did not come before ``deadline``."""
        last = ("app's modules are loaded",) if env.get("SENET_VIZ_WARM_UP") == "0" else (
            "the first page is ready", "could not open the first page")
        while time.monotonic() < deadline:
            lines = [line.strip() for line in log.read_text().splitlines() if "senet-viz:" in line]
            if any(mark in line for line in lines for mark in last):
                return "; ".join(lines)
            time.sleep(0.2)
        return None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Driver:
    """One tab and the measurements of its steps: {step: [(click-to-idle ms, server ms), ...]}."""

    def __init__(self, tab, quiet_ms: int, timeout_ms: int) -> None:
        self.tab, self.quiet, self.timeout = tab, quiet_ms, timeout_ms
        self.times: dict[str, list[tuple[float, float]]] = {}

    def timed(self, step: str | None, action: Callable[[], None]) -> tuple[float, float]:
        """Run ``action`` (which starts a script run) and wait until the app has settled; record it under
        ``step`` (None: not recorded)."""
        mark = self.tab.evaluate("performance.now()")
        action()
        # a run starts within moments of the action; one that starts none fails here, not after the step timeout
        self.tab.wait_for_function(STARTED, arg=mark, timeout=START_TIMEOUT_MS, polling=50)
        self.tab.wait_for_function(SETTLED, arg=[mark, self.quiet], timeout=self.timeout, polling=50)
        took = tuple(self.tab.evaluate(TIMES, mark))
        print(f"  {step or '(setup)'}: {took[0]:.0f} ms (server {took[1]:.0f} ms)", flush=True)
        exceptions = self.tab.get_by_test_id("stException")
        if exceptions.count():
            raise SystemExit(f"{step}: exception on screen: {exceptions.first.inner_text()[:1000]}")
        if step is not None:
            self.times.setdefault(step, []).append(took)
        return took

    # ------------------------------------------------------------------ widgets

    def radio(self, key: str, option: str) -> Callable[[], None]:
        return lambda: self.tab.locator(f".st-key-{key}").get_by_text(option, exact=False).first.click()

    def select(self, key: str, option: str) -> Callable[[], None]:
        def action() -> None:
            self.tab.locator(f".st-key-{key} [data-testid='stSelectbox']").click()
            self.tab.get_by_role("option", name=option, exact=True).click()
        return action

    def nav(self, title: str) -> Callable[[], None]:
        return lambda: self.tab.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()

    def pick_model(self, name: str) -> Callable[[], None]:
        def action() -> None:
            self.tab.locator(".st-key-model_name [data-testid='stSelectbox']").click()
            self.tab.keyboard.type(name)
            self.tab.get_by_role("option", name=name, exact=True).click()
        return action

    def tags(self, key: str) -> list[str]:
        return [t.get_attribute("aria-label") for t in
                self.tab.locator(f".st-key-{key} [data-tag]").all() if t.is_visible()]

    def untag(self, key: str, name: str) -> Callable[[], None]:
        return lambda: self.tab.locator(f".st-key-{key} button[aria-label='Remove {name}']").first.click()

    def tag(self, key: str, name: str) -> Callable[[], None]:
        def action() -> None:
            self.tab.locator(f".st-key-{key} input").first.click()
            self.tab.keyboard.type(name)
            self.tab.get_by_role("option", name=name, exact=True).first.click()
            self.tab.keyboard.press("Escape")  # the list stays open after a choice: closed, as a user would
        return action


def drive(url: str, args: argparse.Namespace, shots: Path | None) -> dict[str, list[tuple[float, float]]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            context.add_init_script(RECORDER)
            tab = context.new_page()
            d = Driver(tab, args.quiet, args.timeout * 1000)
            try:
                script(tab, d, url, args, shots)
            except Exception as exc:  # noqa: BLE001 - what was measured so far is still printed
                print(f"the script stopped: {type(exc).__name__}: {str(exc)[:500]}", flush=True)
                tab.screenshot(path=str(args.logs / "interactions-failed.png"))
            return d.times
        finally:
            browser.close()


def script(tab, d: Driver, url: str, args: argparse.Namespace, shots: Path | None) -> None:
    """The fixed script (see the module's docstring)."""

    # 1. the first chart on a fresh server, from the page's request
    start = time.perf_counter()
    tab.goto(url)
    tab.wait_for_selector(".js-plotly-plot .main-svg", timeout=args.timeout * 1000)
    chart = (time.perf_counter() - start) * 1000
    tab.wait_for_function(SETTLED, arg=[0, args.quiet], timeout=args.timeout * 1000, polling=50)
    # in the page's own clock: from its load event (its HTML and the scripts it names are in) to the chart's SVG
    after_load = tab.evaluate("window.__chart - performance.getEntriesByType('navigation')[0].loadEventEnd")
    # ui.serve's early chart page: when it asked for Streamlit's Plotly module and when that was evaluated
    early = tab.evaluate("""() => { const e = window.__earlyChartModule, load = performance.getEntriesByType(
      'navigation')[0].loadEventEnd; return e ? e.map(t => t - load) : null; }""")
    if early:
        print("  chart module asked " + ", evaluated ".join(f"{t:.0f} ms" for t in early) + " after the load event; "
              f"first chart {after_load:.0f} ms", flush=True)
    d.times["first chart (fresh server, embedded)"] = [(chart, float("nan"))]
    d.times["first chart after the page's load event"] = [(after_load, float("nan"))]
    if args.first_only:
        return

    # 2. MobileNetV3-Small on every shared sample
    d.timed("model load + first page (informative)", d.pick_model(MODEL))
    d.timed("900 images: first analysis (informative)",
            lambda: tab.get_by_test_id("stSidebar").get_by_text("All classes (").click())

    # 3. view-only changes
    for _ in range(args.repeats):
        chosen = d.tags("compare_classes")
        d.timed("Fig. 6: a class removed", d.untag("compare_classes", chosen[-1]))
        d.timed("Fig. 6: a class added", d.tag("compare_classes", chosen[-1]))
    for _ in range(args.repeats):
        for view in VIEWS[1:] + VIEWS[:1]:
            d.timed(f"view: {view}", d.radio("compare_view", view))
    d.timed(None, d.radio("compare_view", VIEWS[1]))
    chosen = d.tags("compare_classes")
    for i in range(args.repeats):
        d.timed("Fig. 7: another class", d.select("fig7_class", chosen[(i + 1) % len(chosen)]))
    d.timed(None, d.radio("compare_view", VIEWS[0]))

    # 4. page switches, a cached model switch
    for page in PAGES:  # first visits (informative: some compute their page's own results once)
        d.timed(f"first visit: {page} (informative)", d.nav(page))
    for _ in range(args.repeats):
        for page in PAGES:
            d.timed("page switch", d.nav(page))
    for _ in range(args.repeats):
        d.timed("cached model switch", d.pick_model(EMBEDDED))
        d.timed("cached model switch", d.pick_model(MODEL))

    # 5. Remove SE blocks: the last stage, identity then mean; a sweep
    d.timed(None, d.nav("Remove SE blocks"))
    d.timed(None, d.radio("remove_how", "Stage"))
    tab.locator("[class*='st-key-remove_stage'] [data-testid='stSelectbox']").click()
    tab.get_by_role("option").first.wait_for()
    d.timed(None, tab.get_by_role("option").last.click)  # the last stage
    d.timed("Remove last stage: identity", lambda: tab.locator(".st-key-remove_on label").first.click())
    d.timed("Remove last stage: mean", d.radio("remove_mode", "mean"))
    for mode in ("mean", "identity"):
        if mode not in args.sweep_modes:
            d.timed(None, d.untag("sweep_modes", mode))
    for kind in ("block", "stage", "last"):
        if kind not in args.sweep_kinds:
            d.timed(None, d.untag("sweep_kinds", kind))
    mark = tab.evaluate("performance.now()")
    tab.locator(".st-key-sweep_run button").first.click()
    if shots is not None:  # the bar once it shows an estimate ("... left"), with Cancel beside it
        tab.get_by_test_id("stProgress").filter(has_text="left").first.wait_for(timeout=args.timeout * 1000)
        tab.screenshot(path=str(shots / "sweep-running.png"), full_page=True)
    tab.wait_for_function(SETTLED, arg=[mark, args.quiet], timeout=args.timeout * 1000, polling=200)
    d.times.setdefault("sweep", []).append(tuple(tab.evaluate(TIMES, mark)))
    if args.cancel:  # another sweep (every single block), cancelled once its bar moves
        d.timed(None, d.tag("sweep_kinds", "block"))
        mark = tab.evaluate("performance.now()")
        tab.locator(".st-key-sweep_run button").first.click()
        tab.get_by_test_id("stProgress").filter(has_text="images").first.wait_for(timeout=args.timeout * 1000)
        if shots is not None:
            tab.screenshot(path=str(shots / "sweep-before-cancel.png"), full_page=True)
        d.timed("sweep: Cancel", lambda: tab.locator(".st-key-sweep_cancel button").first.click())
        tab.get_by_text("Sweep cancelled").first.wait_for()
        if shots is not None:
            tab.screenshot(path=str(shots / "sweep-cancelled.png"), full_page=True)

def median(values: list[float]) -> str:
    values = [v for v in values if v == v]  # nan: not measured
    return f"{statistics.median(values):8.0f}" if values else "       -"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["both", "on", "off"], default="both",
                        help="which servers: tail replay on, off (SENET_VIZ_TAIL_REPLAY=0) or both")
    parser.add_argument("--ports", type=int, nargs=2, default=[8611, 8612])
    parser.add_argument("--repeats", type=int, default=5, help="repeats of each view-only step")
    parser.add_argument("--quiet", type=int, default=400, help="ms the app must stay idle to count as settled")
    parser.add_argument("--timeout", type=int, default=900, help="seconds one step may take")
    parser.add_argument("--sweep-modes", nargs="+", default=["identity"], choices=["identity", "mean"])
    parser.add_argument("--sweep-kinds", nargs="+", default=["stage"], choices=["block", "stage", "last"])
    parser.add_argument("--screenshots", type=Path, help="a folder for screenshots of the Remove page during a sweep")
    parser.add_argument("--plain", action="store_true",
                        help="start `streamlit run app.py` instead of `python -m ui.serve` (what `make run` starts)")
    parser.add_argument("--cancel", action="store_true", help="then start a second sweep and cancel it")
    parser.add_argument("--first-only", type=int, metavar="N", default=0,
                        help="only the first chart, on N fresh servers of each kind (medians of N)")
    parser.add_argument("--early-charts", choices=["on", "off", "both"], default="on",
                        help="ui.serve's page that evaluates the Plotly chart module early (off: "
                             "SENET_VIZ_EARLY_CHARTS=0, Streamlit's page); both: each server twice, on a second port")
    parser.add_argument("--no-warm-up", action="store_true",
                        help="SENET_VIZ_WARM_UP=0: the server does not open its first page ahead of the first visitor")
    parser.add_argument("--logs", type=Path, default=Path("/tmp"), help="where the servers' logs go")
    args = parser.parse_args()
    if not SAMPLES.is_dir():
        raise SystemExit(f"the shared samples are missing: {SAMPLES}")

    runs = [("replay on", {}, args.ports[0]), ("replay off", {"SENET_VIZ_TAIL_REPLAY": "0"}, args.ports[1])]
    runs = [r for r in runs if args.only == "both" or r[0].endswith(args.only)]
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs; repeats {args.repeats}; sweep "
          f"modes {args.sweep_modes} kinds {args.sweep_kinds}", flush=True)
    if args.no_warm_up:
        runs = [(name, {**env, "SENET_VIZ_WARM_UP": "0"}, port) for name, env, port in runs]
    if args.early_charts != "on":
        late = [(f"{name}, late charts", {**env, "SENET_VIZ_EARLY_CHARTS": "0"}, port + 10) for name, env, port in runs]
        runs = late if args.early_charts == "off" else [r for pair in zip(runs, late, strict=True) for r in pair]
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}
    # fresh servers in turn (on, off, on, off, ...): a drift of the machine's load falls on both alike
    for _ in range(max(1, args.first_only)):
        for name, env, port in runs:
            server = Server(port, env, args.logs / f"interactions-{port}.log", args.plain)
            try:
                print(f"{name}: {server.preloaded or 'no preload (streamlit run app.py)'}", flush=True)
                started = time.perf_counter()
                times = drive(server.url, args, args.screenshots if name == "replay on" else None)
                for step, got in times.items():
                    results.setdefault(name, {}).setdefault(step, []).extend(got)
                print(f"{name}: script done in {time.perf_counter() - started:.0f} s; load "
                      f"{os.getloadavg()[0]:.2f}", flush=True)
            finally:
                server.stop()
    steps = list(dict.fromkeys(s for r in results.values() for s in r))
    header = "".join(f" | {name:>10} idle  server  n" for name in results)
    print(f"\n{'step (medians, ms)':44}{header}")
    for step in steps:
        line = f"{step:44}"
        for r in results.values():
            got = r.get(step, [])
            line += f" | {median([t for t, _ in got])} {median([s for _, s in got])} {len(got):2d}"
        print(line)
    if len(results) == 2 and all("sweep" in r for r in results.values()):
        on, off = (statistics.median(t for t, _ in r["sweep"]) for r in results.values())
        print(f"\nsweep: replay on / off = {on / off:.2f}")
    print(f"load after: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
