"""Results shared between sessions, and torch threads per request (ui/engine.py, ui/memo.py, ui/keys.py).

Two AppTest sessions in one process: the second renders what the first computed without a forward pass
(``ui.jobs.forward_count``); another image set is computed, once. Unit tests of the shared LRU (bounded,
least-recently-used eviction, one computation for concurrent requests of one key, errors not cached), of the
image-set keys (a file edited in place or another folder with the same layout is a new key), of the thread policy
and of the worker threads (capped torch threads, one model copy per concurrent request).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from apptest_helpers import assert_ok, open_page
from conftest import EMBEDDED_MISSING, TINY_CLASSES, embedded_model_ready, requires
from streamlit.testing.v1 import AppTest
from tiny_nets import make_tiny_seresnet

from senet_viz.data.folders import folder_source
from senet_viz.gates.capture import capture, hook_count
from senet_viz.lru import LRU
from senet_viz.models.loaded import LoadedModel
from ui.caches import Flight, ResultCache
from ui.engine import Engine, ThreadPolicy, thread_policy
from ui.jobs import forward_count
from ui.keys import images_key, weights_digest

ROOT = Path(__file__).resolve().parents[1]
MODEL = "se_resnet_fmnist"
SAMPLES = ROOT / "assets" / "fmnist_samples"
TIMEOUT = 240
CLASSES = ["Bag", "Sneaker"]

needs_model = requires(embedded_model_ready(MODEL), EMBEDDED_MISSING)


def small_folder(dest: Path, per_class: int = 4) -> Path:
    """A folder with one sub-folder per class (class names of the embedded model), ``per_class`` samples each."""
    for cls in CLASSES:
        (dest / cls).mkdir(parents=True)
        for f in sorted((SAMPLES / cls).glob("*.png"))[:per_class]:
            shutil.copy2(f, dest / cls / f.name)
    return dest


# ------------------------------------------------------------------------------------------------ two sessions


def new_session() -> AppTest:
    """A session on the embedded model and its 300 samples, on the first page (Compare classes)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.selectbox(key="model_name").set_value(MODEL)
    at.run()
    assert_ok(at)
    assert "Compare classes" in [h.value for h in at.header]
    return at


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def folder_session(folder: Path) -> AppTest:
    """A session on the embedded model and ``folder`` from its first run: no pass over the 300 samples."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state["model_name"] = MODEL
    at.session_state["image_source"] = "Folder on the server"
    at.session_state["server_folder"] = str(folder)
    at.run()
    assert_ok(at)
    assert at.text_input(key="server_folder").value == str(folder)
    return at


def use_folder(at: AppTest, folder: Path) -> None:
    at.radio(key="image_source").set_value("Folder on the server")
    at.run()  # draws the folder box (on its default folder, which may be missing here)
    at.text_input(key="server_folder").set_value(str(folder))
    at.run()
    assert_ok(at)


@pytest.mark.slow
@needs_model
def test_a_second_session_gets_the_first_sessions_results_without_a_forward_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("SENET_VIZ_DATA_ROOTS", str(tmp_path))  # the typed folder lies inside the server's roots
    first = new_session()
    compare = charts(first)
    open_page(first, "remove", "Remove SE blocks")
    removal = metrics(first)

    before = forward_count()
    second = new_session()
    assert charts(second) == compare
    open_page(second, "remove", "Remove SE blocks")
    assert metrics(second) == removal
    assert forward_count() == before, "the second session ran the network again"

    # Another image set is new work: the second session computes it ...
    folder = small_folder(tmp_path / "two classes")
    use_folder(second, folder)
    computed = forward_count() - before
    assert computed >= 2 * len(CLASSES) * 4  # at least the full pass and the ablated pass over the 8 images
    assert metrics(second) != removal
    # ... and the first session, asking for it afterwards, gets it without a forward pass.
    after = forward_count()
    use_folder(first, folder)
    assert metrics(first) == metrics(second)
    assert forward_count() == after


# ------------------------------------------------------------------------------------------------ the LRU


def counting(calls: list):
    def make(value):
        def compute(progress):
            calls.append(value)
            return value
        return compute
    return make


def test_the_cache_is_bounded_per_kind_and_evicts_the_least_recently_used():
    calls: list = []
    make = counting(calls)
    cache = ResultCache({"run": 2, "sweep": 1})
    cache.fetch("run", "a", make("A"))
    cache.fetch("run", "b", make("B"))
    assert cache.fetch("run", "a", make("A again")) == "A"  # a hit: "a" is now the most recently used
    cache.fetch("run", "c", make("C"))  # evicts "b", the least recently used (not "a", the oldest)
    assert cache.keys("run") == ["a", "c"]
    assert cache.fetch("run", "b", make("B again")) == "B again"  # evicted, so computed again
    assert cache.keys("run") == ["c", "b"]
    cache.fetch("sweep", "a", make("S"))  # kinds have their own bounds and keys
    assert cache.keys("run") == ["c", "b"] and cache.keys("sweep") == ["a"] and len(cache) == 3
    assert calls == ["A", "B", "C", "B again", "S"]


def test_the_memo_helper_is_a_bounded_lru_with_move_to_end_on_a_hit():
    memo = LRU(3)
    for key in "abc":
        memo.put(key, key.upper())
    assert memo.get("a") == "A"  # a hit: "a" becomes the most recently used
    assert "b" in memo and memo.keys() == ["b", "c", "a"]  # a membership test is not a use
    memo.put("d", "D")  # evicts "b", the least recently used
    assert memo.keys() == ["c", "a", "d"] and memo.get("b", "missing") == "missing"
    memo.put("c", "C2")  # storing again is a use too
    memo.put("e", "E")
    assert memo.items() == [("d", "D"), ("c", "C2"), ("e", "E")] and len(memo) == 3
    assert memo.pop("d") == "D" and memo.keys() == ["c", "e"]
    memo.clear()
    assert len(memo) == 0
    with pytest.raises(ValueError):
        LRU(0)


@pytest.mark.parametrize("workers", [0, 2], ids=["inline", "worker pool"])
def test_concurrent_requests_for_one_key_compute_it_once(workers):
    cache = ResultCache({"run": 4})
    calls, waiting = [], []
    release, both_waiting, computing = threading.Event(), threading.Event(), threading.Event()
    barrier = threading.Barrier(2)

    def compute(progress):
        calls.append(threading.current_thread().name)
        progress(1, 2)
        computing.set()
        assert release.wait(10)  # hold the flight open until both requests are in
        return object()

    def wait(flight: Flight) -> None:
        waiting.append(flight)
        if len(waiting) == (2 if workers else 1):  # inline: the first request computes before it waits
            both_waiting.set()
        flight.done.wait()

    pool = ThreadPoolExecutor(workers) if workers else None
    results = []

    def ask() -> None:
        barrier.wait(10)
        results.append(cache.fetch("run", "key", compute, wait=wait,
                                   **({"submit": pool.submit} if pool else {})))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    assert both_waiting.wait(10) and computing.wait(10)
    assert waiting[0].progress == (1, 2) and not waiting[0].done.is_set()  # progress visible while waiting
    release.set()
    for t in threads:
        t.join(10)
    if pool:
        pool.shutdown()
    assert len(calls) == 1
    assert len(results) == 2 and results[0] is results[1]
    assert cache.fetch("run", "key", compute) is results[0] and len(calls) == 1


def test_different_keys_are_computed_at_the_same_time():
    cache = ResultCache({"run": 4})
    inside = threading.Barrier(2)

    def compute(progress):
        inside.wait(10)  # raises BrokenBarrierError unless the other key is being computed meanwhile
        return threading.current_thread().name

    with ThreadPoolExecutor(2) as pool:
        asks = [pool.submit(cache.fetch, "run", key, compute) for key in ("a", "b")]
        names = {f.result(timeout=20) for f in asks}
    assert len(names) == 2


def test_an_error_reaches_every_waiter_and_is_not_cached():
    cache = ResultCache({"run": 4})
    calls, waiting, errors = [], [], []
    release, both_waiting = threading.Event(), threading.Event()

    def failing(progress):
        calls.append(1)
        release.wait(10)
        raise ValueError("no calibration image")

    def wait(flight: Flight) -> None:
        waiting.append(flight)
        if len(waiting) == 2:
            both_waiting.set()

    def ask() -> None:
        try:
            cache.fetch("run", "k", failing, submit=pool.submit, wait=wait)
        except ValueError as exc:
            errors.append(str(exc))

    with ThreadPoolExecutor(1) as pool:
        threads = [threading.Thread(target=ask) for _ in range(2)]
        for t in threads:
            t.start()
        assert both_waiting.wait(10)
        release.set()
        for t in threads:
            t.join(10)
    assert errors == ["no calibration image"] * 2 and calls == [1]
    assert cache.keys("run") == []
    assert cache.fetch("run", "k", lambda progress: "fixed") == "fixed"  # the next request computes again


# ------------------------------------------------------------------------------------------------ keys


@needs_model
def test_images_key_follows_the_files_not_their_relative_paths(tmp_path):
    names = ["Bag", "Sneaker"]
    one = small_folder(tmp_path / "one", per_class=2)
    two = small_folder(tmp_path / "two", per_class=2)  # the same layout and relative paths, another folder
    key = images_key(folder_source(one, names))
    assert images_key(folder_source(one, names)) == key  # stable
    assert images_key(folder_source(two, names)) != key

    edited = next((one / "Bag").iterdir())
    stat = edited.stat()
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # edited in place, same size
    # A watched folder's edit is seen once the watcher delivered its event (ui/keys.py _stamps): milliseconds.
    deadline = time.monotonic() + 10
    while images_key(folder_source(one, names)) == key and time.monotonic() < deadline:
        time.sleep(0.01)
    assert images_key(folder_source(one, names)) != key

    relabelled = folder_source(one, ["Sneaker", "Bag"])  # the same files under other labels
    assert images_key(relabelled) != images_key(folder_source(one, names))


def test_the_weights_digest_is_computed_again_only_when_the_file_changes(tmp_path, monkeypatch):
    import senet_viz.models.weights

    hashed = []
    real = senet_viz.models.weights.hash_file  # the one place a file is read (file_sha256 memoises it)
    monkeypatch.setattr(senet_viz.models.weights, "hash_file", lambda path: hashed.append(path) or real(path))
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"first")
    first = weights_digest(path)
    assert weights_digest(path) == first and len(hashed) == 1
    path.write_bytes(b"second, longer")
    assert weights_digest(path) != first and len(hashed) == 2


# ------------------------------------------------------------------------------------------------ threads


def test_thread_policy_defaults_and_overrides():
    assert thread_policy({}, cores=8) == ThreadPolicy(8, 4, 2)
    assert thread_policy({}, cores=1) == ThreadPolicy(1, 1, 1)
    assert thread_policy({"SENET_VIZ_TORCH_THREADS": "8"}, cores=8) == ThreadPolicy(8, 8, 1)
    assert thread_policy({"SENET_VIZ_TORCH_THREADS": "1"}, cores=8) == ThreadPolicy(8, 1, 8)
    assert thread_policy({"SENET_VIZ_TORCH_THREADS": "2", "SENET_VIZ_MAX_CONCURRENT": "3"},
                         cores=8) == ThreadPolicy(8, 2, 3)
    for bad in ("0", "-1", "many", " "):  # ignored with a warning: the defaults apply
        assert thread_policy({"SENET_VIZ_TORCH_THREADS": bad, "SENET_VIZ_MAX_CONCURRENT": bad},
                             cores=8) == ThreadPolicy(8, 4, 2)


def test_workers_run_capped_and_concurrent_requests_get_their_own_model_copy(tiny_seresnet, tiny_input):
    before = torch.get_num_threads()
    engine = Engine(ThreadPolicy(cores=4, threads=1, concurrent=2))
    primary = tiny_seresnet.model
    params = {k: v.clone() for k, v in primary.state_dict().items()}
    both_hold = threading.Barrier(2)

    def request(together: bool = True) -> tuple[int, int, torch.Tensor]:
        with engine.model(tiny_seresnet) as loaded:
            if together:
                both_hold.wait(10)  # two requests hold a model at the same moment
            with loaded.lock, torch.inference_mode():
                out = loaded.model(tiny_input)
            return torch.get_num_threads(), id(loaded.model), out

    try:
        results = [f.result(timeout=60) for f in [engine.pool.submit(request) for _ in range(2)]]
        assert [threads for threads, _, _ in results] == [1, 1]  # the cap holds on every worker
        models = {model for _, model, _ in results}
        assert len(models) == 2 and id(primary) in models  # the cached model and one copy, each used once
        torch.testing.assert_close(results[0][2], results[1][2])  # the copy computes the same function
        _, later, _ = engine.pool.submit(request, False).result(timeout=60)
        assert later in models  # copies are reused, not made per request
        assert hook_count(primary) == 0
        for k, v in primary.state_dict().items():
            assert torch.equal(v, params[k]), k
    finally:
        engine.pool.shutdown(wait=True)
        torch.set_num_threads(before)


@pytest.mark.slow
def test_model_copies_are_dropped_with_the_cached_model():
    before = torch.get_num_threads()
    engine = Engine(ThreadPolicy(cores=2, threads=1, concurrent=2))
    try:
        loaded = LoadedModel.from_module(make_tiny_seresnet(), "tiny", TINY_CLASSES, input_size=(3, 64, 64))
        with engine.model(loaded) as first, engine.model(loaded) as second:
            assert first is loaded and second.model is not loaded.model  # busy: the second request gets a copy
            assert second.lock is not loaded.lock
            copy_ref = weakref.ref(second.model)
        del first, second, loaded
        gc.collect()
        assert copy_ref() is None  # the engine kept nothing of a model the model cache let go
    finally:
        engine.pool.shutdown()
        torch.set_num_threads(before)


def test_a_copy_is_made_while_the_model_is_busy_and_has_no_hooks_of_the_busy_request(tiny_seresnet, tiny_input):
    before = torch.get_num_threads()
    engine = Engine(ThreadPolicy(cores=2, threads=1, concurrent=2))
    primary = tiny_seresnet.model
    try:
        with engine.model(tiny_seresnet) as busy, capture(busy.model, busy.blocks) as recorder:
            assert busy is tiny_seresnet and hook_count(primary) == len(busy.blocks)  # the model's lock is held here

            def other_request() -> tuple[int, torch.Tensor]:
                with engine.model(tiny_seresnet) as other, capture(other.model, other.blocks) as own:
                    other.model(tiny_input)
                    return hook_count(other.model) - len(other.blocks), own.gates[other.blocks[0].name]

            # Would time out if copying waited for this thread's lock (that is, for the whole busy request).
            extra_hooks, gates = engine.pool.submit(other_request).result(timeout=30)
            primary(tiny_input)
        assert extra_hooks == 0  # the busy request's hooks were not copied
        assert len(gates) == len(tiny_input) and len(recorder.gates[busy.blocks[0].name]) == len(tiny_input)
        assert hook_count(primary) == 0
    finally:
        engine.pool.shutdown()
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ compute processes


@pytest.mark.slow
@needs_model
def test_with_compute_processes_the_passes_run_in_a_worker_process_with_the_same_results(monkeypatch, tmp_path):
    """SENET_VIZ_COMPUTE=processes: the Remove page shows the numbers the thread engine shows, and the server
    process runs no forward pass for them (the worker process does)."""
    from ui import engine as shared_engine
    from ui import jobs

    monkeypatch.setenv("SENET_VIZ_DATA_ROOTS", str(tmp_path))  # the typed folders lie inside the server's roots
    folder = small_folder(tmp_path / "two classes")
    threads = folder_session(folder)
    open_page(threads, "remove", "Remove SE blocks")
    expected = metrics(threads)

    monkeypatch.setenv("SENET_VIZ_COMPUTE", "processes")
    monkeypatch.setenv("SENET_VIZ_MAX_CONCURRENT", "1")  # one worker process is enough, and each costs a torch import
    shared_engine.engine.clear()  # a new engine reads the policy
    try:
        moved = tmp_path / "same images elsewhere"  # new content keys: nothing cached from the thread run
        shutil.copytree(folder, moved)
        processes = folder_session(moved)
        assert shared_engine.engine().policy.processes
        before = forward_count()
        open_page(processes, "remove", "Remove SE blocks")
        assert metrics(processes) == expected
        assert forward_count() == before, "the server process ran the network itself"
        assert shared_engine.engine()._processes is not None, "no worker process was used"
        # the workers did not run app.py again when they started (Streamlit installs it as __main__)
        assert shared_engine.engine()._processes.submit(jobs.main_script).result(timeout=60) is None
    finally:
        engine = shared_engine.engine()
        if engine._processes is not None:
            engine._processes.shutdown(cancel_futures=True)
        shared_engine.engine.clear()
    monkeypatch.delenv("SENET_VIZ_COMPUTE")
    monkeypatch.delenv("SENET_VIZ_MAX_CONCURRENT")


def test_the_compute_setting_is_read_and_a_bad_value_falls_back_to_threads():
    assert not thread_policy({}, cores=8).processes
    assert thread_policy({"SENET_VIZ_COMPUTE": "processes"}, cores=8).processes
    assert not thread_policy({"SENET_VIZ_COMPUTE": "forks"}, cores=8).processes
