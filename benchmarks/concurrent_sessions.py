"""Two browser sessions at once vs one alone, on a real Streamlit server, with and without the torch thread cap.

For each configuration a server is started (``streamlit run app.py --server.headless true
--server.fileWatcherType none`` on a free port, the configuration in its environment), a warm-up session loads the
models (Remove SE blocks on the embedded samples); then, ``--repeat`` times, each configuration in turn (so drifting
load on the machine hits all of them alike):

- single: one session opens Remove SE blocks on a folder of ``--images`` images nobody has asked for yet (cold:
  a full pass, a pass with stage 5's SE blocks removed, a pass of the model retrained without them);
- concurrent: two sessions at once, each on its own cold folder of the same size, so the shared result cache
  cannot hide the work (different work, same amount).

A session is a websocket client speaking Streamlit's protocol as a browser tab does (rerun this page with these
widget values); its time runs from the request to ``script_finished``. The folders hold copies of the embedded
Fashion-MNIST samples (hard links; a result's key is the file's absolute path, size and mtime, so every folder is
new work); ``--busy N`` keeps N CPU-bound processes running meanwhile (other work on the machine). Printed per
configuration: the median single time, the median concurrent time (the slower of the two sessions), their ratio
(target < 1.5 with the cap) and the settings the server ran with:

- capped: the defaults of ui/engine.py (threads per request = cores // 2, requests at once = cores // threads);
- uncapped: SENET_VIZ_TORCH_THREADS = cores and SENET_VIZ_MAX_CONCURRENT = 8 (every request on every core, at
  once: the behaviour before the cap);
- queued: SENET_VIZ_TORCH_THREADS = cores and SENET_VIZ_MAX_CONCURRENT = 1 (every core, one request at a time);
- processes: the capped defaults with SENET_VIZ_COMPUTE = processes (the passes in worker processes, each with
  its own interpreter, so the two sessions' Python work does not take turns on the server's GIL).

It first prints what ``torch.set_num_threads`` in one Python thread does to the others (measured here).

    python benchmarks/concurrent_sessions.py [--images 600] [--repeat 5] [--busy 1]
        [--configs capped,processes,uncapped,queued]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "assets" / "fmnist_samples"
PAGE = "remove"


def probe_set_num_threads() -> str:
    """What a thread sees after another thread called torch.set_num_threads(1) (the main thread ran torch)."""
    import torch

    before = torch.get_num_threads()
    torch.ones(1).add_(1)  # the main thread has run torch: its own team size is settled
    seen: dict[str, int] = {}
    started, set_done = threading.Event(), threading.Event()

    def early() -> None:  # ran torch before the other thread's call
        torch.ones(1).add_(1)
        seen["early, before"] = torch.get_num_threads()
        started.set()
        set_done.wait()
        seen["early, after"] = torch.get_num_threads()

    def setter() -> None:
        torch.set_num_threads(1)
        seen["setter"] = torch.get_num_threads()

    first = threading.Thread(target=early)
    first.start()
    started.wait()
    t = threading.Thread(target=setter)
    t.start()
    t.join()
    set_done.set()
    first.join()
    late = threading.Thread(target=lambda: seen.__setitem__("new thread", torch.get_num_threads()))
    late.start()
    late.join()
    seen["main"] = torch.get_num_threads()
    torch.set_num_threads(before)
    return (f"torch.set_num_threads(1) in one thread (default {before}): that thread {seen['setter']}, a thread "
            f"started later {seen['new thread']}, a thread that had run torch {seen['early, after']} "
            f"(before: {seen['early, before']}), the main thread {seen['main']}")


def make_folder(dest: Path, n: int) -> Path:
    """``n`` images in class sub-folders, hard links to the embedded samples (copies where links fail)."""
    files = sorted(SAMPLES.glob("*/*.png"))
    for i in range(n):
        src = files[i % len(files)]
        target = dest / src.parent.name / f"{src.stem}_{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, target)
        except OSError:
            shutil.copy2(src, target)
    return dest


# ------------------------------------------------------------------------------------------------ server


class Server:
    def __init__(self, env: dict[str, str]) -> None:
        """A server of app.py with exactly ``env`` as its environment."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="senet_viz_server_", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.fileWatcherType", "none", "--server.port", str(self.port), "--server.address", "127.0.0.1",
             "--browser.gatherUsageStats", "false",
             # Streamlit guesses "development mode" when it is not installed in site-packages (e.g. pip --target)
             # and then refuses --server.port
             "--global.developmentMode", "false"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stcore/health", timeout=2) as r:
                    if r.read() == b"ok":
                        return
            except OSError:
                time.sleep(0.2)
        self.stop(keep_log=True)
        tail = Path(self.log.name).read_text(errors="replace")[-3000:]
        raise SystemExit(f"the server did not start; its log ({self.log.name}) ends:\n{tail}")

    def stop(self, keep_log: bool = False) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        if not keep_log:
            os.unlink(self.log.name)


async def session(port: int, widgets: dict[str, str] | None = None, page_hash: str = "",
                  start: asyncio.Event | None = None, check: bool = True
                  ) -> tuple[float, dict[str, str], dict[str, str]]:
    """One browser tab's run of a page: (seconds to script_finished, widget ids by key, page hashes by url).
    With ``check``, an exception or error shown on the page stops the benchmark."""
    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    async with websockets.connect(f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit"],
                                  max_size=None, open_timeout=60) as ws:
        msg = BackMsg()
        msg.rerun_script.query_string = ""
        msg.rerun_script.page_script_hash = page_hash
        for wid, value in (widgets or {}).items():
            state = msg.rerun_script.widget_states.widgets.add()
            state.id, state.string_value = wid, value
        if start is not None:
            await start.wait()  # both sessions are connected: send together
        began = time.perf_counter()
        await ws.send(msg.SerializeToString())
        ids: dict[str, str] = {}
        pages: dict[str, str] = {}
        problems: list[str] = []
        while True:
            fwd = ForwardMsg()
            fwd.ParseFromString(await asyncio.wait_for(ws.recv(), timeout=600))
            kind = fwd.WhichOneof("type")
            if kind == "delta" and fwd.delta.WhichOneof("type") == "new_element":
                element = fwd.delta.new_element
                which = element.WhichOneof("type")
                body = getattr(element, which)
                if getattr(body, "id", ""):
                    ids[body.id.split("-", 2)[2] if body.id.startswith("$$ID-") else body.id] = body.id
                if which == "exception":
                    problems.append(f"exception: {body.message}")
                elif which == "alert" and body.format == body.ERROR:
                    problems.append(f"error: {body.body}")
            elif kind == "navigation":
                pages = {p.url_pathname: p.page_script_hash for p in fwd.navigation.app_pages}
            elif kind == "script_finished" and fwd.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                elapsed = time.perf_counter() - began
                if problems and check:
                    raise SystemExit(f"the page failed: {problems}")
                return elapsed, ids, pages


class App:
    """A warm server of one configuration, with what a session needs to ask for a folder on a page."""

    def __init__(self, env: dict[str, str]) -> None:
        self.server = Server(env)
        port = self.server.port
        _, ids, pages = asyncio.run(session(port))  # loads the model: not timed
        self.page = pages[PAGE]
        asyncio.run(session(port, page_hash=self.page))  # loads the retrained twin; nothing timed is cached
        # Only to learn the folder box's id: its default folder may not suit the model (an error on the page).
        _, ids2, _ = asyncio.run(session(port, {ids["image_source"]: "Folder on the server"}, self.page,
                                         check=False))
        self.source, self.folder_box = ids["image_source"], ids2["server_folder"]

    def widgets(self, folder: Path) -> dict[str, str]:
        return {self.source: "Folder on the server", self.folder_box: str(folder)}

    def single(self, folder: Path) -> float:
        return asyncio.run(session(self.server.port, self.widgets(folder), self.page))[0]

    def concurrent(self, a: Path, b: Path) -> float:
        """Two sessions sent together; the slower one's time."""
        async def both() -> list[float]:
            go = asyncio.Event()
            tasks = [asyncio.create_task(session(self.server.port, self.widgets(f), self.page, go)) for f in (a, b)]
            await asyncio.sleep(0.5)  # both websockets open
            go.set()
            return [t[0] for t in await asyncio.gather(*tasks)]

        return max(asyncio.run(both()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600, help="images per session (default 600)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--configs", default="capped,processes,uncapped,queued")
    parser.add_argument("--busy", type=int, default=0,
                        help="CPU-bound processes running meanwhile (other work on the machine), default 0")
    args = parser.parse_args()

    import streamlit.logger

    streamlit.logger.set_log_level("error")  # no "No runtime found" warnings: ui.engine is imported for its policy
    from senet_viz.settings import usable_cores
    from ui.engine import COMPUTE_ENV, CONCURRENT_ENV, THREADS_ENV, thread_policy

    n_cores = usable_cores()
    settings = {
        "capped": {},
        "uncapped": {THREADS_ENV: str(n_cores), CONCURRENT_ENV: "8"},
        "queued": {THREADS_ENV: str(n_cores), CONCURRENT_ENV: "1"},
        "processes": {COMPUTE_ENV: "processes"},
    }
    names = args.configs.split(",")
    print(probe_set_num_threads())
    print(f"{n_cores} cores; Remove SE blocks, {args.images} images per session (3 passes each), median of "
          f"{args.repeat}, configurations interleaved")
    apps: dict[str, App] = {}
    policies = {}
    hogs: list[subprocess.Popen] = []
    times: dict[str, tuple[list[float], list[float], list[float]]] = {name: ([], [], []) for name in names}
    try:
        for name in names:  # every server started and warm first: each repeat then runs every configuration
            env = {k: v for k, v in os.environ.items() if k not in (THREADS_ENV, CONCURRENT_ENV, COMPUTE_ENV)}
            env.update(settings[name])
            policies[name] = thread_policy(env, n_cores)
            apps[name] = App(env)
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
        if hogs:
            print(f"{len(hogs)} busy process(es) running meanwhile")
        with tempfile.TemporaryDirectory(prefix="senet_viz_sessions_") as tmp:
            for name in names:  # untimed: every worker (thread copy or process) has loaded the models
                apps[name].concurrent(*(make_folder(Path(tmp) / f"{name}-warm-{s}", 64) for s in "ab"))
            for r in range(args.repeat):
                for name in names:
                    alone, a, b = (make_folder(Path(tmp) / f"{name}-{r}-{s}", args.images) for s in ("1", "a", "b"))
                    times[name][0].append(apps[name].single(alone))
                    times[name][1].append(apps[name].concurrent(a, b))
                    times[name][2].append(apps[name].single(alone))  # again: every result cached
                    print(f"  repeat {r + 1} {name:<9}: single {times[name][0][-1]:.2f} s, "
                          f"concurrent {times[name][1][-1]:.2f} s, single again (cached) {times[name][2][-1]:.2f} s",
                          flush=True)
    finally:
        for hog in hogs:
            hog.kill()
        for app in apps.values():
            app.server.stop()
    print()
    print(f"{'config':<10} {'threads':>7} {'at once':>7} {'single s':>9} {'concurrent s':>13} {'ratio':>6} "
          f"{'cached s':>9}")
    for name in names:
        single, concurrent, cached = (statistics.median(t) for t in times[name])
        policy = policies[name]
        print(f"{name:<10} {policy.threads:>7} {policy.concurrent:>7} {single:>9.2f} {concurrent:>13.2f} "
              f"{concurrent / single:>6.2f} {cached:>9.2f}")
    print("ratio = concurrent (the slower of two sessions doing different work) / single; target < 1.5 when capped")
    print("cached = the single session's request again, every result cached: the page's own work (listing and keying")
    print("the folder, drawing), which runs in the server's one Python interpreter for every session")


if __name__ == "__main__":
    main()
