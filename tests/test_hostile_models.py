"""Hostile model files, built here in tmp_path, sent where a stranger sends them (issue 18, items 1 and 5).

Through the app (AppTest, "Your own model", default settings: no SENET_VIZ_ALLOW_CODE):

- a ``.pt2`` whose ``weights_config.json`` marks a weight ``use_pickle``, with a pickle that creates a marker file
  when unpickled (``torch.export.load`` unpickles such weights with ``weights_only=False``);
- a TorchScript archive whose scripted ``__setstate__`` creates a file (``torch.from_file(path, shared=True)``),
  which ``torch.jit.load`` runs;
- a TorchScript module that reads a file through ``torch.from_file`` (mapped shared, it also grows the file: the
  trace on disk);

each refused with a message that names SENET_VIZ_ALLOW_CODE=1 and the safe formats, the marker not created, the
file not touched, ``torch.jit.load`` never called. Each payload is shown to be live: the trusted (CLI) path that
the local user keeps does run it. A typed model path outside the data roots gets the one outside-the-roots
answer, present or missing; a hostile ``.pt2`` typed inside the roots is refused like an upload.

In the library: the ``.pt2`` check (:func:`senet_viz.models.pt2_check.pt2_code_risks`) finds each place where
``torch.export.load`` or ``program.module()`` runs code from a pickle-free archive (a sympy expression it evals,
guard code it execs, file operators, call targets, pickled members, compiled code, a sample-inputs pickle that
``weights_only=True`` refuses); the two that ran code in a pickle-free file (sympy, guards) are shown to do so on
the trusted path and not on the stranger's. The local user's clean TorchScript and ``.pt2`` still load, and so
does a clean ``.pt2`` from the browser.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from apptest_helpers import assert_ok, own_model_app, shown
from streamlit.testing.v1 import AppTest
from timm.layers import SEModule
from torch import nn

from senet_viz.models import zoo
from senet_viz.models.loaders import CodeNotAllowedError, ModelLoadError, load_model_arg
from senet_viz.models.model_files import ModelFileOptions
from senet_viz.models.pt2_check import pt2_code_risks
from senet_viz.paths import outside_roots_message

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240
SIZE = (3, 32, 32)
ALLOW = "SENET_VIZ_ALLOW_CODE=1"

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated for torch.export


# ------------------------------------------------------------------------------------ the files, built here


def tiny_se_net(classes: int = 10) -> nn.Module:
    """Conv, one SE gate, pool, classifier: small enough to load in a second."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 4, 1), SEModule(8, rd_ratio=0.5), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, classes)).eval()


def clean_pt2(path: Path, classes: int = 10) -> Path:
    """``torch.export.save`` of the tiny SE network with a free batch: what a careful user uploads."""
    program = torch.export.export(tiny_se_net(classes), (torch.zeros(2, *SIZE),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, path)
    return path


def clean_torchscript(path: Path, classes: int = 10) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(tiny_se_net(classes)).save(str(path))
    return path


class _CreatesFile:
    """Unpickling this opens ``path`` for writing: the file appears (the stand-in for any code)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _rewrite_pt2(source: Path, target: Path, *, program=None, weights_config=None, members=None) -> Path:
    """``source`` with its program JSON / weights config edited (functions of the parsed JSON) and ``members``
    (name relative to the archive folder -> bytes) replaced or added, stored uncompressed as torch writes it."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
        prefix = archive.namelist()[0].split("/")[0] + "/"
        extra = dict(members or {})
        for item in archive.infolist():
            name = item.filename[len(prefix):]
            data = archive.read(item)
            if name == "models/model.json" and program is not None:
                parsed = json.loads(data)
                program(parsed)
                data = json.dumps(parsed).encode()
            elif name == "data/weights/model_weights_config.json" and weights_config is not None:
                parsed = json.loads(data)
                weights_config(parsed)
                data = json.dumps(parsed).encode()
            out.writestr(item, extra.pop(name, data))
        for name, data in extra.items():
            out.writestr(prefix + name, data)
    return target


def pickled_pt2(path: Path, marker: Path) -> Path:
    """A .pt2 whose first weight is marked use_pickle and holds a pickle that creates ``marker``."""
    clean = clean_pt2(path.with_name("clean_for_" + path.name))

    def use_pickle(config: dict) -> None:
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True

    return _rewrite_pt2(clean, path, weights_config=use_pickle,
                        members={"data/weights/weight_0": pickle.dumps(_CreatesFile(marker), protocol=2)})


class _WritesOnLoad(nn.Module):
    """Scripted with a ``__setstate__`` that maps ``path`` shared, which creates it: torch.jit.load runs it."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.buf = torch.zeros(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.buf[:1].float()

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return self.path, self.training

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.path = state[0]
        self.training = state[1]
        self.buf = torch.from_file(self.path, True, 8, dtype=torch.uint8)


class _ReadsAFile(nn.Module):
    """Scripted; its forward maps ``path`` shared with 64 bytes (reading it, and growing a shorter file)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.net = tiny_se_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        secret = torch.from_file(self.path, True, 64, dtype=torch.uint8)
        return self.net(x) + secret[:1].float() * 0


def setstate_torchscript(path: Path, marker: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(_WritesOnLoad(str(marker))).save(str(path))
    assert not marker.exists()  # saving does not run __setstate__
    return path


def from_file_torchscript(path: Path, secret: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(_ReadsAFile(str(secret))).save(str(path))
    return path


# ----------------------------------------------------------------------------------------------- the app




def upload_model(at: AppTest, path: Path) -> str:
    """Upload ``path`` under "Your own model"; the one error shown, as the viewer reads it."""
    at.get("file_uploader")[0].set_value((path.name, path.read_bytes(), "application/octet-stream"))
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert len(at.error) == 1, [e.value for e in at.error]
    return shown(at.error[0].value)


@pytest.fixture
def no_code(monkeypatch):
    """The default server: SENET_VIZ_ALLOW_CODE unset, and torch.jit.load watched."""
    monkeypatch.delenv("SENET_VIZ_ALLOW_CODE", raising=False)
    calls: list[str] = []
    real = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda f, *a, **k: calls.append(str(f)) or real(f, *a, **k))
    return calls


@pytest.mark.slow
def test_a_pt2_with_a_pickled_weight_is_refused_and_its_payload_never_runs(tmp_path, no_code):
    marker = tmp_path / "pwned_by_pt2"
    model = pickled_pt2(tmp_path / "weights_pickled.pt2", marker)
    at = own_model_app()
    message = upload_model(at, model)
    assert message.startswith("Could not load weights_pickled.pt2: weights_pickled.pt2 can run code on this "
                              "server while it loads: it holds the weight 0.weight stored as a pickle"), message
    assert ALLOW in message and "ONNX" in message, message
    assert not marker.exists()
    # the payload is live: the local user's path (torch.export.load) runs it
    with pytest.raises(ModelLoadError):
        load_model_arg(str(model))
    assert marker.exists()


@pytest.mark.slow
def test_torchscript_that_writes_a_file_while_loading_is_refused_before_torch_opens_it(tmp_path, no_code):
    marker = tmp_path / "written_by_setstate"
    model = setstate_torchscript(tmp_path / "writes.pt", marker)
    at = own_model_app()
    message = upload_model(at, model)
    assert message.startswith("Could not load writes.pt: writes.pt is a TorchScript archive, and TorchScript "
                              "carries code that runs on this server"), message
    assert ALLOW in message and "ONNX" in message, message
    assert not marker.exists() and no_code == []
    torch.jit.load(str(model))  # the payload is live
    assert marker.exists()


@pytest.mark.slow
def test_torchscript_that_reads_a_file_is_refused_and_the_file_is_untouched(tmp_path, no_code):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"key!")
    model = from_file_torchscript(tmp_path / "reads.ts", secret)
    at = own_model_app()
    message = upload_model(at, model)
    assert "reads.ts is a TorchScript archive" in message and ALLOW in message, message
    assert secret.read_bytes() == b"key!" and no_code == []
    torch.jit.load(str(model))(torch.zeros(1, *SIZE))  # the payload is live: the shared map grows the file
    assert secret.stat().st_size == 64


@pytest.mark.slow
def test_typed_model_paths_outside_the_roots_get_one_answer_and_inside_are_checked(tmp_path, monkeypatch, no_code):
    outside, inside = tmp_path / "outside", tmp_path / "inside"
    outside.mkdir()
    inside.mkdir()
    monkeypatch.setenv("SENET_VIZ_DATA_ROOTS", str(inside))
    marker = tmp_path / "pwned_by_typed_pt2"
    clean_pt2(outside / "present.pt2")
    at = own_model_app()
    answers = []
    for typed in (outside / "present.pt2", outside / "missing.pt2", f"{outside / 'net.py'}:build", "/etc/passwd"):
        at.text_input(key="own_model_path").set_value(str(typed))
        at.run()
        assert not at.exception
        answers.append(shown(at.error[0].value))
    want = " ".join(outside_roots_message("model file").split())
    assert answers[0] == answers[1] == answers[3] == want, answers
    assert answers[2] == " ".join(outside_roots_message("Python file").split()), answers[2]
    # inside the roots, a hostile file is refused like an upload
    at.text_input(key="own_model_path").set_value(str(pickled_pt2(inside / "typed.pt2", marker)))
    at.run()
    assert "typed.pt2 can run code on this server" in shown(at.error[0].value)
    assert not marker.exists()


@pytest.mark.slow
def test_a_clean_pt2_loads_from_the_browser_and_its_name_is_shown_as_text(tmp_path, no_code):
    model = clean_pt2(tmp_path / "x.pt2", classes=3)
    named = tmp_path / "![t](http:__example.org_t.png).pt2"  # a Markdown image as a file name
    named.write_bytes(model.read_bytes())
    at = own_model_app()
    at.text_input(key="own_input_size").set_value("3,32,32")
    at.get("file_uploader")[0].set_value((named.name, named.read_bytes(), "application/octet-stream"))
    at.run()
    assert_ok(at)
    caption = " ".join(c.value for c in at.sidebar.caption)
    assert "![t](" not in caption, caption  # escaped: shown as typed, never fetched
    assert f"{named.name} · export · 1 gate (se) · 3 classes · input 3x32x32" in shown(caption), caption
    assert "ONNX (.onnx) and torch.export (.pt2) files saved without pickles load here" in caption
    assert no_code == []


# ------------------------------------------------------------------------------------------- the library


@pytest.fixture(scope="module")
def clean_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clean")
    return {"pt2": clean_pt2(folder / "m.pt2"), "ts": clean_torchscript(folder / "m.pt")}


@pytest.mark.slow
def test_the_local_user_loads_clean_torchscript_and_pt2_and_a_stranger_a_clean_pt2(clean_files):
    local, stranger = ModelFileOptions(input_size=SIZE), ModelFileOptions(input_size=SIZE, untrusted=True)
    for key, fmt in (("ts", "torchscript"), ("pt2", "export")):
        loaded = zoo.load_model(str(clean_files[key]), device="cpu", options=local)
        assert loaded.file_info.format == fmt and [b.gate_kind for b in loaded.blocks] == ["se"]
    assert zoo.load_model(str(clean_files["pt2"]), device="cpu", options=stranger).file_info.format == "export"
    with pytest.raises(CodeNotAllowedError, match="TorchScript archive"):
        zoo.load_model(str(clean_files["ts"]), device="cpu", options=stranger)
    allowed = ModelFileOptions(input_size=SIZE, untrusted=True, allow_code=True)  # SENET_VIZ_ALLOW_CODE=1
    assert zoo.load_model(str(clean_files["ts"]), device="cpu", options=allowed).file_info.format == "torchscript"
    # the policy is part of the options, hence of the app's cache key (repr)
    assert repr(stranger) != repr(local) and stranger != local
    assert pt2_code_risks(clean_files["pt2"].read_bytes()) == []


def _add_node(target: str, args: list) -> callable:
    def edit(program: dict) -> None:
        program["graph_module"]["graph"]["nodes"].insert(0, {"target": target, "inputs": args, "outputs": [
            {"as_none": True}], "metadata": {}})
    return edit


def _sym(program: dict, payload: str) -> None:
    text = json.dumps(program)
    symbol = re.search(r"Symbol\('(s\d+)', positive=True, integer=True\)", text)[0]
    program.update(json.loads(text.replace(symbol, payload.replace("SYMBOL", symbol))))


SHAPE_PAYLOAD = "SYMBOL if __import__('pathlib').Path('MARKER').touch() is None else SYMBOL"
GUARD_PAYLOAD = "__import__('pathlib').Path('MARKER').touch() is None"


@pytest.mark.parametrize("case, edit, members, fragment", [
    ("sympy", lambda p, m: _sym(p, SHAPE_PAYLOAD.replace("MARKER", str(m))), None,
     "a shape expression naming 'if'"),
    ("guards", lambda p, m: p.update(guards_code=[GUARD_PAYLOAD.replace("MARKER", str(m))]), None,
     "guard code"),
    ("from_file", lambda p, m: _add_node("torch.ops.aten.from_file.default", [
        {"name": "filename", "arg": {"as_string": str(m)}, "kind": 1}])(p), None,
     "the operator aten.from_file, which reads or writes files"),
    ("save", lambda p, m: _add_node("torch.ops.aten.save.default", [])(p), None, "the operator aten.save"),
    ("os.system", lambda p, m: _add_node("torch.os.system", [])(p), None, "the call target 'torch.os.system'"),
    ("quoted name", lambda p, m: p["graph_module"]["signature"]["input_specs"][0]["parameter"].update(
        parameter_name='a")or(print("x'), None, "not a plain name"),
    ("string input", lambda p, m: p["graph_module"]["graph"]["inputs"].append({"as_string": "x' or '"}), None,
     "a string input"),
    ("opaque object", None, {"data/constants/opaque_obj_0": b"\x80\x02."}, "a pickled object"),
    ("compiled code", None, {"data/aotinductor/model/model.so": b"\x7fELF"}, "compiled code"),
    ("sample inputs", None, {"data/sample_inputs/model.pt": pickle.dumps(_CreatesFile("/nonexistent/x"))},
     "sample inputs that only a full unpickler reads"),
])
def test_every_place_a_pt2_runs_code_is_refused_for_a_stranger(clean_files, tmp_path, case, edit, members,
                                                               fragment):
    marker = tmp_path / "marker"
    hostile = _rewrite_pt2(clean_files["pt2"], tmp_path / "hostile.pt2", members=members,
                           program=(lambda p: edit(p, marker)) if edit else None)
    risks = pt2_code_risks(hostile.read_bytes())
    assert any(fragment in r for r in risks), risks
    with pytest.raises(CodeNotAllowedError, match=re.escape(fragment)):
        load_model_arg(str(hostile), untrusted=True)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["sympy", "guards"])
def test_a_pickle_free_pt2_runs_code_on_the_trusted_path(clean_files, tmp_path, case):
    """Why the check reads more than pickles: these two ran code through torch.export.load / program.module()."""
    marker = tmp_path / "marker"
    edit = ((lambda p: _sym(p, SHAPE_PAYLOAD.replace("MARKER", str(marker)))) if case == "sympy" else
            (lambda p: p.update(guards_code=[GUARD_PAYLOAD.replace("MARKER", str(marker))])))
    hostile = _rewrite_pt2(clean_files["pt2"], tmp_path / "hostile.pt2", program=edit)
    with zipfile.ZipFile(hostile) as archive:
        assert not any(n.endswith(".pkl") for n in archive.namelist())  # no pickle but the sample inputs
    with pytest.raises(CodeNotAllowedError):
        load_model_arg(str(hostile), untrusted=True)
    assert not marker.exists()
    torch.export.load(str(hostile)).module()(torch.zeros(2, *SIZE))  # guards run with the forward
    assert marker.exists()


def test_bytes_that_are_no_pt2_archive_are_a_load_error(tmp_path):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match="not a torch.export program") as caught:
        load_model_arg(str(bad), untrusted=True)
    assert not isinstance(caught.value, CodeNotAllowedError)
    assert pt2_code_risks(io.BytesIO(clean_pt2(tmp_path / "c.pt2").read_bytes()).getvalue()) == []


def test_the_server_loads_every_model_file_as_a_strangers_whatever_options_a_page_passes(clean_files, no_code):
    from ui import model_cache

    for options in (None, ModelFileOptions(input_size=SIZE)):  # a page that forgot the browser's policy
        with pytest.raises(CodeNotAllowedError, match="TorchScript archive"):
            model_cache.get_model(str(clean_files["ts"]), None, "cpu", options)
    assert no_code == []  # torch.jit.load never ran
    assert model_cache.get_model(str(clean_files["pt2"]), None, "cpu",
                                 ModelFileOptions(input_size=SIZE)).file_info.format == "export"
