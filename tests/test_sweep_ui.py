"""The Remove page's sweep while it runs: progress in counts, a time estimate, and Cancel (issue 21).

The cancel itself is checked where it is decided, deterministically: :class:`ui.caches.ResultCache` flights whose
computations step only when the test lets them (no timing), and the page's flow under AppTest with the wait
replaced by a stop (as a rerun interrupts it) and then a real sweep run to the end.
"""

from __future__ import annotations

import threading

import pytest
from apptest_helpers import app_session, assert_ok, open_page

from senet_viz.inference.run import Cancelled
from ui.caches import Flight, ResultCache, seconds_left
from ui.memo import time_left_text
from ui.sweeps import SweepPlan, replay_summary


def test_sweep_progress_text_counts_configurations_and_images():
    plan = SweepPlan(configurations=40)
    total = 900 * 41  # every image once for the full network, once per configuration
    assert plan.text(0, 0) == "Sweeping 40 configurations: starting ..."
    assert plan.text(450 * 41, total) == "Sweeping 40 configurations · 450 of 900 images"
    assert plan.text(total, total) == "Sweeping 40 configurations · 900 of 900 images"
    with_mean = SweepPlan(configurations=2, calibration=180)
    total = 180 + 720 * 3
    assert with_mean.text(60, total) == ("Sweeping 2 configurations: fitting the mean gates · 60 of 180 calibration "
                                         "images")
    assert with_mean.text(180 + 64 * 3, total) == "Sweeping 2 configurations · 64 of 720 images"
    assert SweepPlan(1).text(2, 4) == "Sweeping 1 configuration · 1 of 2 images"


def test_time_left_from_the_first_reports():
    assert seconds_left((10.0, 100), (10.0, 100), 1000, 11.0) is None  # nothing advanced yet
    assert seconds_left((0.0, 0), (10.0, 100), 1000, 10.0) == pytest.approx(90.0)  # 10 images/s, 900 left
    assert seconds_left((0.0, 0), (10.0, 100), 1000, 15.0) == pytest.approx(85.0)  # the running batch counts
    assert seconds_left((0.0, 0), (10.0, 100), 100, 99.0) == 0.0
    assert time_left_text(None) == ""
    assert time_left_text(4) == "a few seconds left"
    assert time_left_text(41) == "about 40 s left"
    assert time_left_text(200) == "about 3 min left"
    flight = Flight()
    flight.report(0, 10)
    assert flight.seconds_left() is None


def test_replay_summary_says_how_each_pass_ran():
    notes = ["tail from blocks.5 (before SE_5_1, 31% of MACs)", "tail from blocks.5 (before SE_5_2, 20% of MACs)",
             "full pass: no cut before the gate of SE_1_1", ""]
    assert replay_summary(notes) == ("2 of 3 replayed only the network's tail from the latest cut before their first "
                                     "removed gate; 1 ran the whole network (no cut before the gate of SE_1_1).")
    assert replay_summary([""]) == ""


class _Interrupted(BaseException):
    """What a Streamlit rerun raises in a waiting script run."""


class Batches:
    """A computation of ``n`` batches that runs one batch each time the test calls :meth:`step`, checking its
    flight's cancel token before each, as the library's passes do."""

    def __init__(self, n: int) -> None:
        self.n, self.ran = n, 0
        self.go, self.stepped = threading.Semaphore(0), threading.Semaphore(0)

    def __call__(self, flight: Flight) -> str:
        for i in range(self.n):
            self.go.acquire()
            try:
                if flight.cancelled():
                    raise Cancelled("the pass was cancelled")
                self.ran += 1
                flight(i + 1, self.n)
            finally:
                self.stepped.release()
        return "done"

    def step(self) -> None:
        self.go.release()
        assert self.stepped.acquire(timeout=30)


def _leave_after_first_report(flight: Flight) -> None:
    while flight.progress is None:
        flight.done.wait(0.01)
    raise _Interrupted  # the session's run is interrupted (e.g. its Cancel button was pressed)


def test_cancel_stops_a_computation_no_session_waits_for():
    cache = ResultCache({"sweep": 4})
    work = Batches(5)
    asker = threading.Thread(target=lambda: pytest.raises(_Interrupted, cache.fetch, "sweep", "k", work,
                                                          submit=lambda job: threading.Thread(target=job).start(),
                                                          wait=_leave_after_first_report))
    asker.start()
    work.step()  # batch 1 reported: the session leaves its wait
    asker.join(30)
    assert cache.cancel("sweep", "k")  # nobody waits now
    work.step()  # the next batch sees the token and stops
    assert work.ran == 1
    assert cache.keys("sweep") == []  # nothing cached
    assert not cache.cancel("sweep", "k")  # no flight any more
    assert cache.fetch("sweep", "k", lambda progress: "again") == "again"  # Run sweep again computes anew


def test_cancel_leaves_a_computation_another_session_waits_for():
    cache = ResultCache({"sweep": 4})
    work = Batches(3)
    got: list[str] = []
    other = threading.Thread(target=lambda: got.append(cache.fetch(
        "sweep", "k", work, submit=lambda job: threading.Thread(target=job).start(), waiter="other session")))
    other.start()
    work.step()
    assert not cache.cancel("sweep", "k")  # the other session still waits: it goes on
    work.step()
    work.step()
    other.join(30)
    assert got == ["done"] and work.ran == 3
    assert cache.fetch("sweep", "k", lambda progress: "never") == "done"


def test_the_cancelling_sessions_own_interrupted_wait_does_not_count():
    # Streamlit starts a session's next run (the one that handles Cancel) before its interrupted run has left its
    # wait: that wait is the same session's, and the computation is cancelled all the same.
    cache = ResultCache({"sweep": 4})
    work = Batches(3)
    reported, leave = threading.Event(), threading.Event()

    def lingering(flight: Flight) -> None:
        while flight.progress is None:
            flight.done.wait(0.01)
        reported.set()
        leave.wait(30)
        raise _Interrupted

    asker = threading.Thread(target=lambda: pytest.raises(_Interrupted, cache.fetch, "sweep", "k", work,
                                                          submit=lambda job: threading.Thread(target=job).start(),
                                                          wait=lingering, waiter="session A"))
    asker.start()
    work.step()
    assert reported.wait(30)
    assert not cache.cancel("sweep", "k", waiter="session B")  # another session's wait counts
    assert cache.cancel("sweep", "k", waiter="session A")  # its own does not
    leave.set()
    asker.join(30)
    work.step()
    assert work.ran == 1 and cache.keys("sweep") == []


def test_a_request_after_a_cancel_starts_a_new_computation():
    cache = ResultCache({"sweep": 4})
    old, new = Batches(3), Batches(1)
    start = lambda job: threading.Thread(target=job).start()  # noqa: E731
    asker = threading.Thread(target=lambda: pytest.raises(_Interrupted, cache.fetch, "sweep", "k", old,
                                                          submit=start, wait=_leave_after_first_report))
    asker.start()
    old.step()
    asker.join(30)
    assert cache.cancel("sweep", "k")
    got: list[str] = []
    again = threading.Thread(target=lambda: got.append(cache.fetch("sweep", "k", new, submit=start)))
    again.start()  # before the old computation noticed: it must not be joined
    new.step()
    again.join(30)
    old.step()  # the old one stops now, and does not retire the new flight's result
    assert got == ["done"] and cache.fetch("sweep", "k", lambda progress: "never") == "done"


@pytest.mark.slow
def test_remove_page_cancel_then_run_again(monkeypatch):
    import streamlit as st

    import ui.results

    at = open_page(app_session(), "remove", "Remove SE blocks")  # the embedded model and its samples
    at.multiselect(key="sweep_modes").set_value(["identity"])
    at.multiselect(key="sweep_kinds").set_value(["stage"])
    at.run()

    # the wait interrupted at once, as a click during a sweep interrupts it: the request stays, Cancel is drawn
    monkeypatch.setattr(ui.results, "sweep", lambda *args, **kwargs: st.stop())
    cancelled: list[tuple] = []
    monkeypatch.setattr(ui.results, "cancel_sweep", lambda *args: cancelled.append(args[2:]) or True)
    at.button(key="sweep_run").click().run()
    assert_ok(at)
    assert at.button(key="sweep_run").disabled  # one sweep at a time
    at.button(key="sweep_cancel").click().run()
    assert_ok(at)
    assert cancelled == [(("identity",), ("stage",))]
    assert any("Sweep cancelled" in i.value for i in at.info)
    assert not [b for b in at.button if b.key == "sweep_cancel"]  # nothing pending any more

    at.toggle(key="remove_on").set_value(True).run()  # the page keeps serving
    assert_ok(at)
    monkeypatch.undo()
    at.button(key="sweep_run").click().run()  # pressing Run sweep again runs it
    assert_ok(at)
    assert not any("Sweep cancelled" in i.value for i in at.info)
    table = at.dataframe[-1].value
    assert set(table["mode"]) == {"identity"} and len(table) >= 2
