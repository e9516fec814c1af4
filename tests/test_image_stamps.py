"""images_key over a watched folder: no stat per file on every call, and still every edit seen (issue 21)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from senet_viz.data import watch
from senet_viz.data.folders import folder_source
from ui.keys import images_key

NAMES = ["Bag", "Sneaker"]


@pytest.fixture(autouse=True)
def fresh_watches():
    watch.reset()
    yield
    watch.reset()


def image_folder(root: Path, per_class: int = 3) -> Path:
    """Class folders of small files (images_key lists and stats; nothing is decoded)."""
    for name in NAMES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i}.jpg").write_bytes(b"\xff\xd8 not decoded here " + bytes([i]))
    return root


def key_of(folder: Path) -> str:
    return images_key(folder_source(folder, NAMES))  # a new ImageSet each time, as the sidebar's reruns


def touch(path: Path) -> None:
    """Edited in place: same size, a later modification time."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def key_changes(folder: Path, old: str, within_s: float = 10.0) -> bool:
    """Whether the key differs from ``old`` within ``within_s``: an edit is seen once the watcher delivered its
    event (milliseconds), so poll rather than assert at once."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if key_of(folder) != old:
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def count_file_stats(monkeypatch):
    """Paths of the image files stat'ed (os.stat or os.lstat), in any module."""
    seen: list[str] = []
    real_stat, real_lstat = os.stat, os.lstat

    def counted(real):
        def call(path, *args, **kwargs):
            if str(path).endswith(".jpg"):
                seen.append(str(path))
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "stat", counted(real_stat))
    monkeypatch.setattr(os, "lstat", counted(real_lstat))
    return seen


def test_an_unchanged_watched_folder_stats_its_files_once(tmp_path, count_file_stats):
    folder = image_folder(tmp_path / "imgs")
    keys = {key_of(folder) for _ in range(5)}
    assert len(keys) == 1
    assert str(folder) in watch.watched_roots()
    assert len(count_file_stats) == 6 and len(set(count_file_stats)) == 6  # each file once, not once per call


def test_an_edit_in_place_gives_a_new_key(tmp_path):
    folder = image_folder(tmp_path / "imgs")
    key = key_of(folder)
    assert str(folder) in watch.watched_roots()
    touch(folder / "Bag" / "1.jpg")  # in a class folder: the watch is recursive
    assert key_changes(folder, key)
    edited = key_of(folder)
    assert key_of(folder) == edited  # stable again


def test_adding_or_removing_a_file_gives_a_new_key(tmp_path):
    folder = image_folder(tmp_path / "imgs")
    key = key_of(folder)
    (folder / "Sneaker" / "9.jpg").write_bytes(b"\xff\xd8 another")
    added = key_of(folder)
    assert added != key
    (folder / "Bag" / "0.jpg").unlink()
    assert key_changes(folder, added)
    assert key_of(folder) not in (key, added)


def test_without_watchdog_every_file_is_stat_ed_and_an_edit_is_seen_at_once(tmp_path, monkeypatch, count_file_stats):
    monkeypatch.setitem(sys.modules, "watchdog.observers", None)  # the import fails
    folder = image_folder(tmp_path / "imgs")
    key = key_of(folder)
    assert key_of(folder) == key
    assert watch.watched_roots() == []
    assert len(count_file_stats) == 12  # 6 files, twice
    touch(folder / "Bag" / "1.jpg")
    assert key_of(folder) != key  # no watcher to wait for


def test_the_watched_folders_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(watch, "MAX_WATCHED_ROOTS", 2)
    folders = [image_folder(tmp_path / f"imgs{i}", per_class=1) for i in range(3)]
    keys = [key_of(f) for f in folders]
    assert watch.watched_roots() == [str(folders[1]), str(folders[2])]  # the least recently used is unwatched
    assert len(watch._observer.emitters) == 2
    assert key_of(folders[0]) == keys[0]  # watched again, evicting the next least recently used
    assert watch.watched_roots() == [str(folders[2]), str(folders[0])]
    touch(folders[1] / "Bag" / "0.jpg")  # unwatched now: stat'ed again when next asked
    assert key_of(folders[1]) != keys[1]


def test_an_event_empties_the_remembered_stamps(tmp_path, count_file_stats):
    folder = image_folder(tmp_path / "imgs")
    key_of(folder)
    state = watch._roots[str(folder)]

    class Event:  # as watchdog delivers it, without waiting for one
        is_directory, event_type = False, "modified"

    watch._Handler(state).dispatch(Event())
    assert state.stamps == {}
    key_of(folder)
    assert len(count_file_stats) == 12  # taken again after the event


def test_a_stamp_taken_before_an_event_is_not_remembered(tmp_path, monkeypatch):
    folder = image_folder(tmp_path / "imgs")
    key_of(folder)
    state = watch._roots[str(folder)]
    watch._Handler(state).dispatch(type("Event", (), {"is_directory": False, "event_type": "modified"})())
    real = watch._first_stamp

    def racing(path):  # the file changes between its stat and the memo
        stamp = real(path)
        state.generation += 1
        return stamp

    monkeypatch.setattr(watch, "_first_stamp", racing)
    key_of(folder)
    assert state.stamps == {}


def test_a_symlinked_file_is_stat_ed_on_every_call(tmp_path):
    folder = image_folder(tmp_path / "imgs")
    target = tmp_path / "elsewhere.jpg"
    target.write_bytes(b"\xff\xd8 linked")
    (folder / "Bag" / "link.jpg").symlink_to(target)
    key = key_of(folder)
    assert key_of(folder) == key
    touch(target)  # outside the watched folder: no event
    assert key_of(folder) != key


def test_a_folder_with_too_many_sub_folders_is_not_watched(tmp_path, monkeypatch):
    monkeypatch.setattr(watch, "MAX_WATCHED_DIRS", 2)  # the folder and its 2 class folders are 3
    folder = image_folder(tmp_path / "imgs")
    key = key_of(folder)
    assert watch.watched_roots() == []
    touch(folder / "Bag" / "1.jpg")
    assert key_of(folder) != key


def test_a_replaced_folder_is_watched_afresh(tmp_path):
    folder = image_folder(tmp_path / "imgs")
    key = key_of(folder)
    first = watch._roots[str(folder)]
    folder.rename(tmp_path / "old")
    image_folder(folder)  # the same names at the same path: another folder
    touch(folder / "Bag" / "1.jpg")
    assert key_changes(folder, key)
    assert watch._roots[str(folder)] is not first


def test_sessions_in_threads_share_one_watch(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    folder = image_folder(tmp_path / "imgs")
    with ThreadPoolExecutor(4) as pool:
        keys = set(pool.map(lambda _: key_of(folder), range(40)))
    assert len(keys) == 1 and watch.watched_roots() == [str(folder)]
    assert len(watch._observer.emitters) == 1
    touch(folder / "Sneaker" / "2.jpg")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: key_of(folder), range(40)))  # while the event arrives
    assert key_changes(folder, keys.pop())
