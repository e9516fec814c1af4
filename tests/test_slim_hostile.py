"""A slim export's JSON is untrusted input: every lie in it is refused with a message that says what is wrong,
before any weight is loaded; a JSON that is not a slim description (a model card beside the weights) is ignored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import EMBEDDED_MISSING, embedded_model_ready, requires

from senet_viz.models.weights import WeightsError

pytestmark = requires(embedded_model_ready(), EMBEDDED_MISSING)
NAME = "se_resnet_fmnist"


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> tuple[Path, dict]:
    """A real slim export of the embedded model (stage 5 removed): its weights and its JSON document."""
    from senet_viz.analysis.slim import save_slim, slim_network
    from senet_viz.gates.blocks import select_blocks
    from senet_viz.models.zoo import load_model

    loaded = load_model(NAME, device="cpu")
    slim = slim_network(loaded, select_blocks(loaded.blocks, "stage:5"), "identity")
    paths = save_slim(slim, loaded, tmp_path_factory.mktemp("slim"))
    return paths["safetensors"], json.loads(paths["json"].read_text())


def with_json(export, tmp_path: Path, doc: object | None = None, raw: bytes | None = None) -> Path:
    """A copy of the export's weights with ``doc`` (or ``raw`` bytes) as the JSON beside them."""
    weights = tmp_path / export[0].name
    shutil.copy(export[0], weights)
    data = raw if raw is not None else json.dumps(doc).encode()
    weights.with_suffix(".json").write_bytes(data)
    return weights


def load(weights: Path):
    from senet_viz.models.zoo import load_model

    return load_model(NAME, weights=weights, device="cpu")


def edited(doc: dict, **changes) -> dict:
    out = json.loads(json.dumps(doc))
    out.update(changes)
    return out


def entry(doc: dict, i: int = 0, **changes) -> dict:
    out = json.loads(json.dumps(doc))
    out["removed"][i].update(changes)
    return out


def test_the_honest_export_loads(export, tmp_path):
    loaded = load(with_json(export, tmp_path, export[1]))
    assert [b.name for b in loaded.blocks] == ["SE_2_1", "SE_3_1", "SE_4_1"]


CASES = {
    "another model": (lambda d: edited(d, model="legacy_seresnet50"), "is for the model 'legacy_seresnet50'"),
    "unknown block": (lambda d: entry(d, block="SE_9_9"), "'SE_9_9', which is no SE block"),
    "block twice": (lambda d: edited(d, removed=[d["removed"][0], d["removed"][0]]), "SE_5_1 twice"),
    "other path": (lambda d: entry(d, path="layer1.0.se"), "is the module 'layer4.0.se'"),
    "other channels": (lambda d: entry(d, channels=7), "has 128 channels, not 7"),
    "channels not a number": (lambda d: entry(d, channels="128"), "positive whole number"),
    "channels a boolean": (lambda d: entry(d, channels=True), "positive whole number"),
    "unknown how": (lambda d: entry(d, how="exec(open('x').read())"), "must be 'identity', 'scale'"),
    "folded into nothing": (lambda d: entry(d, how="folded into layer9.bn"), "no batch norm or convolution"),
    "folded into its own SE": (lambda d: entry(d, how="folded into layer4.0.se.fc1"), "outside the SE module"),
    "folded into an activation": (lambda d: entry(d, how="folded into layer4.0.act1"), "no batch norm"),
    "unknown mode": (lambda d: edited(d, mode="zero"), "'mode' must be one of"),
    "no block": (lambda d: edited(d, removed=[]), "'removed' must list 1 to"),
    "blocks not a list": (lambda d: edited(d, removed={"SE_5_1": "identity"}), "'removed' must list"),
    "too many blocks": (lambda d: edited(d, removed=d["removed"] * 3000), "'removed' must list 1 to 4096"),
    "entry not an object": (lambda d: edited(d, removed=["SE_5_1"]), "removed[0] is not an object"),
    "long text": (lambda d: entry(d, block="SE_" + "5" * 5000), "1 to 512 characters"),
    "model not text": (lambda d: edited(d, model=["se_resnet_fmnist"]), "'model' must be a text"),
    "newer format": (lambda d: edited(d, format_version=99), "format version 99 is not supported"),
    "other weights": (lambda d: edited(d, weights_sha256="0" * 64), "describes another weights file"),
    "bad sha": (lambda d: edited(d, weights_sha256="abc"), "64 hex digits"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_lying_json_is_refused_with_its_reason(export, tmp_path, case):
    change, message = CASES[case]
    with pytest.raises(WeightsError, match=None) as info:
        load(with_json(export, tmp_path, change(export[1])))
    assert message in str(info.value), str(info.value)


def test_a_huge_or_broken_slim_json_is_refused(export, tmp_path):
    huge = json.dumps(edited(export[1], padding="x" * (1 << 21))).encode()
    with pytest.raises(WeightsError, match="more than a slim description may be"):
        load(with_json(export, tmp_path, raw=huge))
    with pytest.raises(WeightsError, match="not readable JSON"):
        load(with_json(export, tmp_path, raw=b'{"format": "senet_viz.slim", "model": '))


def test_a_json_that_is_no_slim_description_is_ignored(export, tmp_path):
    """A model card beside the weights says nothing about their structure: the weights load as they are (here they
    lack the removed blocks, so the strict loader names them)."""
    weights = with_json(export, tmp_path, {"model": NAME, "weights": "x.safetensors"})
    with pytest.raises(WeightsError, match="missing in file"):
        load(weights)
    weights.with_suffix(".json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(WeightsError, match="missing in file"):
        load(weights)


def test_the_cli_reports_a_lying_json_as_a_usage_error(export, tmp_path, capsys):
    from senet_viz.cli import main

    weights = with_json(export, tmp_path, entry(export[1], block="SE_9_9"))
    code = main(["evaluate", "--model", NAME, "--weights", str(weights), "--images",
                 str(Path(__file__).resolve().parents[1] / "assets" / "fmnist_samples"), "--device", "cpu"])
    assert code == 2
    assert "'SE_9_9', which is no SE block" in capsys.readouterr().err
