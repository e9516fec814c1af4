"""senet_viz.settings: the one integer parser for environment settings and the one count of usable cores."""

from __future__ import annotations

import logging
import os

import pytest

from senet_viz import settings
from senet_viz.settings import env_int, usable_cores


def test_env_int_reads_the_value_or_falls_back_with_a_warning(caplog):
    assert env_int("N", 3, {}) == 3
    assert env_int("N", 3, {"N": "  "}) == 3  # blank is unset
    assert env_int("N", 3, {"N": " 8 "}) == 8
    with caplog.at_level(logging.WARNING, logger="senet_viz.settings"):
        for bad in ("0", "-2", "many", "2.5"):
            assert env_int("N", 3, {"N": bad}) == 3
    assert len(caplog.records) == 4 and "N='many' is not a positive integer; using 3" in caplog.text
    assert env_int("N", 3, {"N": "0"}, minimum=0) == 0 and env_int("N", 3, {"N": "-2"}, minimum=None) == -2


def test_env_int_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("SENET_VIZ_TEST_INT", "5")
    assert env_int("SENET_VIZ_TEST_INT", 1) == 5


def test_strict_env_int_raises_and_names_the_variable():
    with pytest.raises(ValueError, match=r"^RANK='x' is not an integer$"):
        env_int("RANK", 0, {"RANK": "x"}, minimum=None, strict=True)
    with pytest.raises(ValueError, match=r"at least 2"):
        env_int("W", 2, {"W": "1"}, minimum=2, strict=True)
    assert env_int("RANK", 0, {}, minimum=None, strict=True) == 0


def test_usable_cores_follow_the_affinity_and_fall_back_to_the_cpu_count(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 3, 5}, raising=False)
    assert usable_cores() == 3
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert usable_cores() == 1
    assert settings.__all__ == ["env_int", "usable_cores"]
