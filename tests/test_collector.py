"""ui.collector: full garbage collections wait until no script has run for a moment (and come at the latest after a
bound while the server stays busy); Python's own full collections are off once it is installed."""

from __future__ import annotations

import gc

import pytest

from ui import collector as mod
from ui.collector import IDLE_S, MAX_INTERVAL_S, MIN_INTERVAL_S, IdleCollector


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _collector() -> tuple[IdleCollector, Clock, list[float]]:
    clock, done = Clock(), []
    return IdleCollector(clock=clock, collect=lambda: done.append(clock.now)), clock, done


def test_nothing_is_collected_without_activity():
    idle, clock, done = _collector()
    clock.now += 10 * MAX_INTERVAL_S
    assert idle.step() is False and done == []


def test_a_collection_waits_for_the_run_to_end_and_the_server_to_stay_idle():
    idle, clock, done = _collector()
    clock.now += MIN_INTERVAL_S
    with idle.activity():
        clock.now += 5 * IDLE_S  # a long run: not idle while it lasts
        assert idle.step() is False and idle.running == 1
    assert idle.running == 0
    clock.now += IDLE_S / 2
    assert idle.step() is False  # just ended: a click may follow
    clock.now += IDLE_S / 2
    assert idle.step() is True and done == [clock.now] and idle.collections == 1
    clock.now += MAX_INTERVAL_S
    assert idle.step() is False  # nothing happened since


def test_collections_are_at_least_min_interval_apart():
    idle, clock, done = _collector()
    clock.now += 1
    with idle.activity():
        pass
    clock.now += IDLE_S
    assert idle.step() is False  # the last collection (the start) was less than MIN_INTERVAL_S ago
    clock.now += MIN_INTERVAL_S
    assert idle.step() is True and len(done) == 1


def test_a_server_that_never_rests_is_collected_after_the_bound():
    idle, clock, done = _collector()
    with idle.activity():
        clock.now += MAX_INTERVAL_S - 1
        assert idle.step() is False
        clock.now += 1
        assert idle.step() is True and len(done) == 1


def test_an_exception_in_the_run_still_ends_its_activity():
    idle, _, _ = _collector()
    with pytest.raises(RuntimeError), idle.activity():
        raise RuntimeError("a page failed")
    assert idle.running == 0


def test_install_turns_pythons_full_collections_off_once(monkeypatch):
    threshold = gc.get_threshold()
    started = []
    monkeypatch.setattr(mod, "_collector", None)
    monkeypatch.setattr(mod.threading.Thread, "start", lambda self: started.append(self.name))
    try:
        first = mod.install()
        assert mod.install() is first and mod.collector() is first and started == ["senet-viz-idle-gc"]
        assert gc.get_threshold()[:2] == threshold[:2] and gc.get_threshold()[2] == mod.GEN2_OFF
        with mod.script_run():
            assert first.running == 1
        assert first.running == 0
    finally:
        gc.set_threshold(*threshold)


def test_script_run_before_install_is_a_plain_block(monkeypatch):
    monkeypatch.setattr(mod, "_collector", None)
    with mod.script_run():
        pass  # the first run creates the engine (and installs the collector) inside this block
