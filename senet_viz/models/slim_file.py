"""The structure of a slim network (SE blocks taken out) and the JSON that describes it beside its weights.

A slim export (:mod:`senet_viz.analysis.slim`) writes ``<name>_slim.safetensors`` (the slim network's state dict)
and ``<name>_slim.json`` beside it. Loading those weights (``load_model(name, weights=...)``, the CLI's
``--weights``, the app's weights path) finds the JSON by the weights file's stem, applies the same structural
removal to a freshly built network (:func:`apply_slim_sidecar`) and then loads the state dict strictly: the folds
are in the weights, so the structure alone is rebuilt here, never the algebra.

Each removed SE module is replaced by :class:`torch.nn.Identity` (``how`` = ``"identity"`` or
``"folded into <module path>"``) or by a :class:`ChannelScale` (``"scale"``: the frozen gate as a buffer).

The JSON is untrusted input (a file from anyone): it is read only when it declares ``"format":
"senet_viz.slim"`` (another JSON beside weights, e.g. a model card, is ignored), is bounded in bytes and
entries, and every block, module path and channel count must be the fresh network's own, else
:class:`~senet_viz.models.weights.WeightsError` says which.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from senet_viz.gates.blocks import find_se_blocks
from senet_viz.gates.kinds import SEBlock
from senet_viz.models.weights import WeightsError, file_sha256

SLIM_FORMAT = "senet_viz.slim"
SLIM_FORMAT_VERSION = 1
MODES = ("identity", "mean")
MAX_JSON_BYTES = 1 << 20  # a description of a few thousand blocks is a few hundred kB
MAX_ENTRIES = 4096
MAX_TEXT = 512
FOLDED = "folded into "


class ChannelScale(nn.Module):
    """``x * scale`` per channel: a frozen gate that could not be folded into a neighbouring layer. ``scale`` is a
    buffer (no parameter: nothing to train, and the parameter count is that of the network without the SE)."""

    def __init__(self, channels: int, channels_last: bool = False) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.register_buffer("scale", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return x * self.scale
        return x * self.scale.view(1, -1, *([1] * (x.dim() - 2)))

    def extra_repr(self) -> str:
        return f"{self.scale.numel()}" + (", channels_last" if self.channels_last else "")


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` where the module at ``path`` is (a child of its parent, e.g. of an ``nn.Sequential``)."""
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if child not in dict(parent.named_children()):
        raise WeightsError(f"no module '{path}' in the network")
    setattr(parent, child, new)


def remove_blocks(model: nn.Module, entries: Sequence[tuple[SEBlock, str]]) -> None:
    """Replace each block's SE module by Identity, or by a :class:`ChannelScale` when ``how == "scale"``."""
    for block, how in entries:
        if how == "scale":
            channels_last = getattr(model.get_submodule(block.path), "channels_last", False) is True
            replace_module(model, block.path, ChannelScale(block.channels, channels_last))
        else:
            replace_module(model, block.path, nn.Identity())


def sidecar_path(weights: str | Path) -> Path:
    """Where the JSON of a slim weights file lives: beside it, same stem (``x_slim.safetensors`` -> ``x_slim.json``)."""
    return Path(weights).with_suffix(".json")


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise WeightsError(f"slim description: {what} must be a text of 1 to {MAX_TEXT} characters")
    return value


def read_sidecar(weights: str | Path) -> dict | None:
    """The slim description beside ``weights`` (a ``.safetensors`` file), or None when there is none (no JSON, or
    a JSON that is not a slim description). Bounded and checked for its form, not yet against a network."""
    weights = Path(weights)
    if weights.suffix.lower() != ".safetensors":
        return None
    path = sidecar_path(weights)
    try:
        size = path.stat().st_size
    except OSError:
        return None
    if not path.is_file():
        return None
    if size > MAX_JSON_BYTES:
        with path.open("rb") as f:
            head = f.read(4096)
        if SLIM_FORMAT.encode() in head:
            raise WeightsError(f"{path.name} is {size:,} bytes, more than a slim description may be "
                               f"({MAX_JSON_BYTES:,})")
        return None
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, OSError) as exc:  # not JSON (or not UTF-8): a slim file must say so only if it is one
        if SLIM_FORMAT.encode() in path.read_bytes():
            raise WeightsError(f"{path.name} is not readable JSON: {exc}") from exc
        return None
    if not isinstance(doc, dict) or doc.get("format") != SLIM_FORMAT:
        return None
    if doc.get("format_version") != SLIM_FORMAT_VERSION:
        raise WeightsError(f"{path.name}: slim format version {doc.get('format_version')!r} is not supported "
                           f"(this senet-viz reads version {SLIM_FORMAT_VERSION})")
    _text(doc.get("model"), "'model'")
    if doc.get("mode") not in MODES:
        raise WeightsError(f"{path.name}: 'mode' must be one of {', '.join(MODES)}, not {str(doc.get('mode'))[:40]!r}")
    removed = doc.get("removed")
    if not isinstance(removed, list) or not removed or len(removed) > MAX_ENTRIES:
        raise WeightsError(f"{path.name}: 'removed' must list 1 to {MAX_ENTRIES} blocks")
    for i, entry in enumerate(removed):
        if not isinstance(entry, dict):
            raise WeightsError(f"{path.name}: removed[{i}] is not an object")
        for key in ("block", "path", "how"):
            _text(entry.get(key), f"removed[{i}].{key}")
        how = entry["how"]
        if how not in ("identity", "scale") and not (how.startswith(FOLDED) and len(how) > len(FOLDED)):
            raise WeightsError(f"{path.name}: removed[{i}].how must be 'identity', 'scale' or 'folded into <module "
                               f"path>', not {how[:60]!r}")
        if not isinstance(entry.get("channels"), int) or isinstance(entry.get("channels"), bool) \
                or not 0 < entry["channels"] <= 1 << 20:
            raise WeightsError(f"{path.name}: removed[{i}].channels must be a positive whole number")
    sha = doc.get("weights_sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
        raise WeightsError(f"{path.name}: 'weights_sha256' must be 64 hex digits")
    return doc


def check_against(doc: Mapping, blocks: Sequence[SEBlock], model: nn.Module, name: str,
                  where: str = "the slim description") -> list[tuple[SEBlock, str]]:
    """(block, how) for every removed entry of ``doc``, checked against the fresh network ``model`` (its
    ``blocks``) of zoo name ``name``: the same model, known block names with their module paths and channel
    counts, no block twice, folds into batch norms or convolutions of the network."""
    if doc["model"] != name:
        raise WeightsError(f"{where} is for the model {doc['model'][:80]!r}, not {name!r}: load it with "
                           f"--model {doc['model'][:80]}")
    by_name = {b.name: b for b in blocks}
    modules = dict(model.named_modules())
    out: list[tuple[SEBlock, str]] = []
    seen: set[str] = set()
    for entry in doc["removed"]:
        block = by_name.get(entry["block"])
        if block is None:
            shown = ", ".join(list(by_name)[:6]) + (" ..." if len(by_name) > 6 else "")
            raise WeightsError(f"{where} removes {entry['block'][:40]!r}, which is no SE block of {name} ({shown})")
        if entry["block"] in seen:
            raise WeightsError(f"{where} removes {block.name} twice")
        seen.add(block.name)
        if entry["path"] != block.path:
            raise WeightsError(f"{where}: {block.name} is the module {block.path!r} in {name}, not "
                               f"{entry['path'][:80]!r}")
        if entry["channels"] != block.channels:
            raise WeightsError(f"{where}: {block.name} has {block.channels} channels, not {entry['channels']}")
        how = entry["how"]
        if how.startswith(FOLDED):
            target = modules.get(how[len(FOLDED):])
            inside = how[len(FOLDED):] == block.path or how[len(FOLDED):].startswith(block.path + ".")
            if not isinstance(target, nn.BatchNorm2d | nn.Conv2d) or inside:
                raise WeightsError(f"{where}: {block.name} is said to be folded into {how[len(FOLDED):][:80]!r}, "
                                   "which is no batch norm or convolution of the network outside the SE module")
        out.append((block, how))
    return out


def apply_slim_sidecar(model: nn.Module, weights: str | Path, name: str,
                       input_size: tuple[int, int, int]) -> nn.Module:
    """``model`` (freshly built as ``name``) made slim as the JSON beside ``weights`` says, ready for the weights to
    load strictly; unchanged when there is no slim JSON beside them."""
    doc = read_sidecar(weights)
    if doc is None:
        return model
    where = sidecar_path(weights).name
    sha = doc.get("weights_sha256")
    if sha is not None and file_sha256(weights) != sha.lower():
        raise WeightsError(f"{where} describes another weights file (sha256 {sha[:12]}), not "
                           f"{Path(weights).name} (sha256 {file_sha256(weights)[:12]}): keep the pair together")
    entries = check_against(doc, find_se_blocks(model, input_size), model, name, where)
    remove_blocks(model, entries)
    return model
