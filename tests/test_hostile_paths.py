"""Typed server paths from a stranger (issue 18, item 2): image folders, weights files and extract files resolve,
after following symlinks, inside the operator's roots (the start folder, the app's sample folders,
``SENET_VIZ_DATA_ROOTS``); outside, one message that does not tell whether the path exists. Non-image file names
are never listed; folder walks are bounded (entries, depth, seconds) and remembered per folder stamp.

Every hostile folder is built here in ``tmp_path``: another user's folder with images and secret-named files, a
symlink out of a root, ``/``. The app is driven through AppTest; the bounds are checked on the library.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from apptest_helpers import app_session, assert_ok, open_page, shown
from conftest import EMBEDDED_MISSING, embedded_model_ready, requires
from PIL import Image
from streamlit.testing.v1 import AppTest

from senet_viz.data import folders as data
from senet_viz.data.folders import FolderWalkLimit, folder_source
from senet_viz.paths import OutsideRootsError, outside_roots_message
from ui import serving

ROOT = Path(__file__).resolve().parents[1]
MODEL = "se_resnet_fmnist"
SAMPLES = ROOT / "assets" / "fmnist_samples"
TIMEOUT = 240
CLASSES = ("Bag", "Sneaker")
SECRETS = ("id_ed25519", "payroll_2025.xlsx", "wallet.dat")  # file names nobody else may learn

needs_model = requires(embedded_model_ready(MODEL), EMBEDDED_MISSING)


# ------------------------------------------------------------------------------------------------ helpers


def image_folder(dest: Path, per_class: int = 3, secrets: bool = True) -> Path:
    """One sub-folder of PNGs per class (the embedded model's class names), plus secret-named non-image files at
    the top and in a class folder."""
    for cls in CLASSES:
        (dest / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (28, 28), 40 * i + (100 if cls == "Bag" else 0)).save(dest / cls / f"{cls}_{i}.png")
    if secrets:
        (dest / SECRETS[0]).write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
        (dest / SECRETS[1]).write_bytes(b"PK\x03\x04 salaries")
        (dest / CLASSES[0] / SECRETS[2]).write_bytes(b"\x00" * 16)
    return dest


def age(folder: Path, seconds: int = 1_000_000_000) -> Path:
    """Give ``folder`` and its sub-folders an old mtime (``seconds`` since the epoch): a just-made folder is
    "racy" (changed within data.RACY_S of its walk, so walked again) and would hide what the cache remembers."""
    for path in (folder, *(p for p in folder.rglob("*") if p.is_dir())):
        os.utime(path, ns=(seconds * 10**9, seconds * 10**9))
    return folder


def roots_and_outside(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """(a data root set through SENET_VIZ_DATA_ROOTS, a sibling folder outside every root)."""
    roots, outside = tmp_path / "served", tmp_path / "someone_elses_home"
    roots.mkdir()
    outside.mkdir()
    monkeypatch.setenv(serving.DATA_ROOTS_ENV, str(roots))
    for root in serving.data_roots():  # the test's premise: the outside folder is in no root (start folder incl.)
        assert not outside.resolve().is_relative_to(root.resolve()), (outside, root)
    return roots, outside


def page_text(at: AppTest) -> str:
    """Everything the page holds: every element's and block's protobuf (labels, values, help, captions, ...),
    without backslashes."""
    parts: list[str] = []

    def visit(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            parts.append(str(proto))
        for child in getattr(node, "children", {}).values():
            visit(child)

    visit(at._tree)
    return "\n".join(parts).replace("\\", "")  # Markdown escapes (payroll\_2025) and protobuf's own removed


def assert_no_secret(at: AppTest) -> None:
    text = page_text(at)
    for name in SECRETS:
        assert name not in text, f"{name} shown on the page"


def session() -> AppTest:
    at = app_session(MODEL, timeout=TIMEOUT)
    assert_ok(at)
    return at


def type_folder(at: AppTest, folder: str | Path) -> AppTest:
    if at.radio(key="image_source").value != "Folder on the server":
        at.radio(key="image_source").set_value("Folder on the server")
        at.run()
    at.text_input(key="server_folder").set_value(str(folder))
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def errors(at: AppTest) -> list[str]:
    return [shown(e.value) for e in at.error]  # as the reader sees them (typed text is escaped Markdown)


class WalkCounter:
    """Counts ``data._walk_files`` calls per folder (the real walk still runs)."""

    def __init__(self, monkeypatch) -> None:
        self.roots: list[Path] = []
        real = data._walk_files

        def counting(root, *args, **kwargs):
            self.roots.append(Path(root).resolve())
            return real(root, *args, **kwargs)

        monkeypatch.setattr(data, "_walk_files", counting)

    def of(self, folder: Path) -> int:
        return self.roots.count(folder.resolve())


# ------------------------------------------------------------------------------------------------ the app


@pytest.mark.slow
@needs_model
def test_a_folder_outside_the_roots_is_refused_without_a_word_about_its_files(tmp_path, monkeypatch):
    roots, outside = roots_and_outside(tmp_path, monkeypatch)
    image_folder(outside)
    walks = WalkCounter(monkeypatch)
    refused = [outside_roots_message("image folder")]
    at = type_folder(session(), outside)
    assert errors(at) == refused
    assert_no_secret(at)
    text = page_text(at)
    assert not re.search(r"\d+ files in \d+ classes", text), "an image count of the refused folder"
    assert "Bag_0.png" not in text and walks.of(outside) == 0  # not walked at all
    # a missing path beside it, and / (the whole file system), get the very same answer
    assert errors(type_folder(at, outside / "no such folder")) == refused
    assert errors(type_folder(at, "/")) == refused
    assert errors(type_folder(at, "~/../../")) == refused
    # inside the roots a missing folder says so, its typed name shown as text, not as Markdown (no image fetched)
    typed = roots / "![x](http:" / "127.0.0.1:9" / "t.png)"
    type_folder(at, typed)
    assert errors(at) == [f"image folder not found: {typed}"]
    assert "![x](" not in at.error[0].value
    # the app keeps serving: an allowed folder (the embedded samples) works again
    type_folder(at, SAMPLES)
    assert_ok(at)
    assert any("300 files in 10 classes" in c.value for c in at.sidebar.caption)


@pytest.mark.slow
@needs_model
def test_a_symlink_out_of_a_root_is_refused_like_any_outside_path(tmp_path, monkeypatch):
    roots, outside = roots_and_outside(tmp_path, monkeypatch)
    image_folder(outside)
    (roots / "link_to_home").symlink_to(outside, target_is_directory=True)
    # inside the root, a real folder whose files are links out of the root, next to one real image
    mine = image_folder(roots / "mine", secrets=False)
    (mine / CLASSES[0] / "stolen.png").symlink_to(outside / CLASSES[0] / "Bag_0.png")
    (mine / CLASSES[0] / "key.png").symlink_to(outside / SECRETS[0])
    at = type_folder(session(), roots / "link_to_home")
    assert errors(at) == [outside_roots_message("image folder")]
    assert_no_secret(at)
    at = type_folder(at, mine)
    assert_ok(at)
    assert any("6 files in 2 classes" in c.value for c in at.sidebar.caption)  # the two links left out
    text = page_text(at)
    assert "2 linked file(s)" in text and "stolen.png" not in text
    assert "key.png" not in text


@pytest.mark.slow
@needs_model
def test_a_folder_inside_the_roots_works_hides_other_file_names_and_is_walked_once(tmp_path, monkeypatch):
    roots, _ = roots_and_outside(tmp_path, monkeypatch)
    folder = age(image_folder(roots / "course" / "week 1"))
    walks = WalkCounter(monkeypatch)
    at = type_folder(session(), folder)
    assert_ok(at)
    assert any("6 files in 2 classes" in c.value for c in at.sidebar.caption)
    text = page_text(at)
    assert "3 non-image file(s)" in text and ".xlsx x1" in text  # counted by type, never named
    assert_no_secret(at)
    assert walks.of(folder) == 1
    at.run()  # a rerun
    open_page(at, "remove", "Remove SE blocks")  # another page: the sidebar runs again
    other = type_folder(session(), folder)  # another session
    assert_ok(other)
    assert walks.of(folder) == 1, "the unchanged folder was walked again"
    # a new image in a class folder changes that folder's stamp: the next run sees it
    shutil.copy2(folder / "Bag" / "Bag_0.png", folder / "Bag" / "Bag_new.png")
    other.run()
    assert walks.of(folder) == 2
    assert any("7 files in 2 classes" in c.value for c in other.sidebar.caption)


@pytest.mark.slow
@needs_model
def test_a_weights_path_outside_the_roots_gets_one_answer_present_or_missing(tmp_path, monkeypatch):
    roots, outside = roots_and_outside(tmp_path, monkeypatch)
    present = outside / "model.safetensors"
    present.write_bytes(b"not really weights")
    answers = []
    for path in (present, outside / "missing.safetensors", roots / "escape.safetensors"):
        if path.name == "escape.safetensors":
            path.symlink_to(present)
        at = session()
        at.text_input(key="weights_path").set_value(str(path))
        at.run()
        assert not at.exception
        answers.append(errors(at))
    assert answers[0] == answers[1] == answers[2] == [outside_roots_message("weights file")]
    # inside the roots a missing file may say so
    at = session()
    at.text_input(key="weights_path").set_value(str(roots / "missing.safetensors"))
    at.run()
    assert not at.exception
    assert any("not found" in e for e in errors(at)) and outside_roots_message("weights file") not in errors(at)


@pytest.mark.slow
@needs_model
def test_the_channels_extract_path_outside_the_roots_gets_one_answer_present_or_missing(tmp_path, monkeypatch):
    _, outside = roots_and_outside(tmp_path, monkeypatch)
    present = outside / "gates.parquet"
    present.write_bytes(b"PAR1 a file that exists")
    at = app_session(timeout=TIMEOUT)
    open_page(at, "channels", "Channels")
    at.radio(key="channels_source").set_value("An extract file (Parquet on the server)").run()
    answers = []
    for path in (present, outside / "missing.parquet"):
        at.text_input(key="channels_extract").input(str(path)).run()
        assert not at.exception
        answers.append(errors(at))
    assert answers[0] == answers[1] == [outside_roots_message("extract file")]
    # the folder of the extract's images is a typed path too
    at.text_input(key="channels_extract").input(str(ROOT / "assets" / "missing.parquet")).run()  # an app folder
    at.text_input(key="channels_images").input(str(outside)).run()
    assert errors(at) == [outside_roots_message("image folder")]


# ------------------------------------------------------------------------------------------------ the library


def test_within_refuses_outside_folders_with_one_message(tmp_path):
    roots, outside = tmp_path / "served", tmp_path / "other"
    image_folder(roots / "ok", secrets=False)
    image_folder(outside)
    (roots / "escape").symlink_to(outside, target_is_directory=True)
    messages = set()
    for path in (outside, outside / "missing", roots / "escape", roots / ".." / "other", "/"):
        with pytest.raises(OutsideRootsError) as caught:
            folder_source(path, within=[roots])
        messages.add(str(caught.value))
    assert messages == {outside_roots_message("image folder")}
    assert len(folder_source(roots / "ok", within=[roots])) == 6


def test_non_image_files_are_counted_by_type_never_named(tmp_path):
    folder = image_folder(tmp_path / "f")
    (folder / "Sneaker" / "photo.heic").write_bytes(b"x")
    (folder / "notes.secret-token-abc123").write_bytes(b"x")  # a 'suffix' that is really part of a name
    s = folder_source(folder)
    assert len(s) == 6
    listed = " ".join(f"{k.file} {k.reason}" for k in s.skipped)
    assert [k.file for k in s.skipped] == ["5 non-image file(s)"]
    assert ".heic x1" in listed and ".xlsx x1" in listed and "no extension x1" in listed and "other x1" in listed
    for name in (*SECRETS, "photo", "secret-token", "notes"):
        assert name not in listed


def test_walk_bounds_stop_with_a_clear_message(tmp_path):
    folder = image_folder(tmp_path / "f", per_class=5, secrets=False)  # 12 entries: 2 folders, 10 files
    with pytest.raises(FolderWalkLimit, match=r"stopped after 11 files and folders: pick a narrower folder"):
        folder_source(folder, max_entries=11)
    assert len(folder_source(folder, max_entries=12)) == 10
    with pytest.raises(FolderWalkLimit, match=r"stopped after 0 s of listing files: pick a narrower folder"):
        folder_source(folder, max_seconds=0)
    deep = tmp_path / "deep"
    for rel in ("Bag/a.png", "Bag/x/b.png", "Bag/x/y/c.png", "Bag/x/y/z/d.png"):
        (deep / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8)).save(deep / rel)
    s = folder_source(deep, max_depth=2)
    assert [it.key for it in s] == ["Bag/a.png", "Bag/x/b.png"]
    assert [(k.file, "pick a narrower folder" in k.reason) for k in s.skipped] == [
        ("1 folder(s) deeper than 2 levels", True)]
    assert len(folder_source(deep)) == 3  # the default depth: class folders and two more levels
    assert len(folder_source(deep, max_entries=None, max_depth=None, max_seconds=None)) == 4


def test_a_bounded_walk_is_remembered_until_its_folder_changes(tmp_path, monkeypatch):
    # Folder mtimes are set explicitly (age): the test does not depend on the file system's clock.
    folder = age(image_folder(tmp_path / "f", secrets=False), 1_000_000_000)
    walks = WalkCounter(monkeypatch)
    assert len(folder_source(folder)) == 6
    assert len(folder_source(folder, class_names=list(CLASSES))) == 6  # other labels, the same walk
    assert walks.of(folder) == 1
    (folder / "Sneaker" / "sub").mkdir()  # a new sub-folder changes its parent's mtime
    Image.new("L", (8, 8)).save(folder / "Sneaker" / "sub" / "new.png")
    age(folder, 1_000_000_100)
    assert len(folder_source(folder)) == 7 and walks.of(folder) == 2
    assert len(folder_source(folder)) == 7 and walks.of(folder) == 2
    os.remove(folder / "Sneaker" / "sub" / "new.png")  # a removed file changes its folder's mtime
    age(folder / "Sneaker" / "sub", 1_000_000_200)
    assert len(folder_source(folder)) == 6 and walks.of(folder) == 3
    # a folder changed just now may change again within the same clock tick: walked again until it settles
    Image.new("L", (8, 8)).save(folder / "Bag" / "now.png")
    assert len(folder_source(folder)) == 7 and walks.of(folder) == 4
    assert len(folder_source(folder)) == 7 and walks.of(folder) == 5
    age(folder, 1_000_000_300)
    folder_source(folder)
    folder_source(folder)
    assert walks.of(folder) == 6
    # a walk that hit a bound is remembered too (a huge folder is not listed again on every rerun) ...
    monkeypatch.setattr(data, "FAILED_WALK_TTL_S", 3600.0)
    for _ in range(2):
        with pytest.raises(FolderWalkLimit):
            folder_source(folder, max_entries=3)
    assert walks.of(folder) == 7
    # ... but not for ever: after FAILED_WALK_TTL_S it is tried again (a warmed disk may list it in time)
    monkeypatch.setattr(data, "FAILED_WALK_TTL_S", -1.0)
    with pytest.raises(FolderWalkLimit):
        folder_source(folder, max_entries=3)
    assert walks.of(folder) == 8
    # the CLI's unbounded walks are not kept
    folder_source(folder, max_entries=None, max_depth=None, max_seconds=None)
    folder_source(folder, max_entries=None, max_depth=None, max_seconds=None)
    assert walks.of(folder) == 10


@needs_model
def test_the_cli_walks_a_whole_data_set_without_the_apps_bounds(tmp_path, monkeypatch, capsys):
    from senet_viz import cli
    deep = tmp_path / "set"
    for i, cls in enumerate(CLASSES):
        path = deep / cls / "a" / "b" / "c" / "d" / f"{i}.png"  # five levels down, deeper than the app's bound
        path.parent.mkdir(parents=True)
        shutil.copy2(next((SAMPLES / cls).glob("*.png")), path)
    code = cli.main(["evaluate", "--model", MODEL, "--images", str(deep), "--device", "cpu", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 2


def test_the_cli_names_the_files_it_left_out_of_its_own_users_folder(tmp_path):
    folder = image_folder(tmp_path / "f")
    named = folder_source(folder, name_non_images=True, max_entries=None, max_depth=None, max_seconds=None)
    assert {k.file for k in named.skipped} == {SECRETS[0], SECRETS[1], f"Bag/{SECRETS[2]}"}


def test_the_remembered_walks_are_bounded_in_files(tmp_path, monkeypatch):
    one, two = (age(image_folder(tmp_path / name, secrets=False)) for name in ("one", "two"))  # 6 files each
    monkeypatch.setattr(data, "WALK_CACHE_FILES", 20)  # room for one walk with its listing (12), not two
    walks = WalkCounter(monkeypatch)
    folder_source(one)
    folder_source(one)
    assert walks.of(one) == 1
    folder_source(two)  # evicts the least recently used walk
    assert len(data._walks) == 1
    folder_source(one)
    assert walks.of(one) == 2 and walks.of(two) == 1


@pytest.mark.parametrize("start", ["/", "home"])
def test_a_server_started_in_the_root_or_a_home_folder_does_not_open_it(monkeypatch, start):
    folder = Path.home().resolve() if start == "home" else Path("/")
    monkeypatch.setattr(serving, "START_DIR", folder)
    monkeypatch.delenv(serving.DATA_ROOTS_ENV, raising=False)
    assert folder not in serving.data_roots()
    with pytest.raises(OutsideRootsError):
        serving.server_path(str(folder / ".ssh" / "id_ed25519"))
    # the operator can still name it on purpose
    monkeypatch.setenv(serving.DATA_ROOTS_ENV, str(folder))
    assert serving.server_path(str(folder / "data")) == folder / "data"
