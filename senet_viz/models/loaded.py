"""A loaded network with everything needed to feed it and read it (:class:`LoadedModel`), and the last steps of
every load: the device, the channel gates, and the refusal of a network without any.

Kept apart from the zoo so that the code that runs a model (inference, ablation, attribution, cost) does not
import the weight sources and the hub.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from PIL import Image
from torch import nn

from senet_viz.gates.blocks import discover, find_se_blocks
from senet_viz.gates.capture import model_lock
from senet_viz.gates.kinds import SEBlock
from senet_viz.models.outputs import check_kind, detect_outputs
from senet_viz.models.preprocess import Preprocess
from senet_viz.models.registry import ModelSpec


class NoGatesError(ValueError):
    """The network loads but has no channel gate to look at (what was considered is in the message)."""


@dataclass
class LoadedModel:
    """A network ready for inference, with everything needed to feed it and read it."""

    name: str
    model: nn.Module
    transform: Callable[[Image.Image], torch.Tensor]
    class_names: list[str]
    wnids: list[str] | None
    blocks: list[SEBlock]
    device: torch.device
    weights_source: str  # human-readable: file path, "hub cache", "random"
    weights_id: str  # cache key: content digest of the weights, or "random"
    spec: ModelSpec | None = None
    lock: threading.RLock = field(default=None)  # type: ignore[assignment]
    size: tuple[int, int, int] | None = None  # C x H x W of one input when there is no spec (a model file)
    rejected: dict[str, str] = field(default_factory=dict)  # modules considered as gates and why they are not
    file_info: object | None = None  # a model file's senet_viz.models.loaders.LoadInfo (format, path, notes)
    outputs: str = "logits"  # what the network returns: "logits", "probs" or "logprobs" (senet_viz.models.outputs)
    outputs_found: str = "default"  # how: "graph", "module", "values", "default" or "given" (--outputs)

    def __post_init__(self) -> None:
        if self.lock is None:
            self.lock = model_lock(self.model)
        check_kind(self.outputs)

    def with_outputs(self, kind: str | None) -> LoadedModel:
        """This model with its outputs read as ``kind`` (None: as detected); the network itself is shared."""
        if kind is None or kind == self.outputs:
            return self
        return replace(self, outputs=check_kind(kind), outputs_found="given")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_size(self) -> tuple[int, int, int]:
        if self.size is not None:
            return self.size
        return self.spec.input_size if self.spec else (3, 224, 224)

    @classmethod
    def from_module(cls, model: nn.Module, name: str, class_names: list[str],
                    transform: Callable[[Image.Image], torch.Tensor] | None = None,
                    input_size: tuple[int, int, int] = (3, 224, 224), device: str = "cpu",
                    wnids: list[str] | None = None) -> LoadedModel:
        """Wrap a user's own network (SE blocks found structurally if not of a known kind; outputs read as
        :func:`senet_viz.models.outputs.detect_outputs` finds them on a probe batch of two seeded images)."""
        dev = resolve_device(device)
        model = model.eval().to(dev)
        # resize keeps the crop's 0.875 ratio (Preprocess's default resize of 256 suits only 224 crops)
        default = Preprocess(crop=input_size[-1], resize=round(input_size[-1] / 0.875))
        outputs, found = detect_outputs(model, probe_outputs(model, tuple(input_size), dev))
        return cls(name=name, model=model, transform=transform or default.transform(),
                   class_names=list(class_names), wnids=wnids, blocks=find_se_blocks(model, input_size),
                   device=dev, weights_source="in memory", weights_id=f"module-{id(model):x}",
                   size=tuple(input_size), outputs=outputs, outputs_found=found)


def probe_outputs(model: nn.Module, input_size: tuple[int, int, int], device: torch.device) -> torch.Tensor | None:
    """The network's output on two seeded random images (None when it is not one N x classes tensor)."""
    x = torch.randn((2, *input_size), generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    try:
        model.eval()
        with model_lock(model), torch.inference_mode():
            out = model(x)
    except Exception:  # noqa: BLE001 - e.g. a network that takes one image at a time: the gate search will say
        return None
    finally:
        model.train(was_training)
    return out if isinstance(out, torch.Tensor) and out.dim() == 2 else None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is CUDA when a GPU is visible, else the CPU; asking for CUDA without one is an error."""
    if isinstance(device, torch.device):
        return device
    if device in ("auto", None, ""):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(device)


def from_spec(spec: ModelSpec, model: nn.Module, source: str, weights_id: str,
              device: str | torch.device = "auto") -> LoadedModel:
    """``model``, built from ``spec`` with its weights loaded, as a :class:`LoadedModel` on ``device`` (channels
    last on CUDA). Its gates are found by module, else by tracing it (:func:`senet_viz.gates.blocks.discover`);
    a network without any raises :class:`NoGatesError`."""
    dev = resolve_device(device)
    model.eval().to(dev)
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    model, found = discover(model, spec.input_size)
    if not found.blocks:
        raise NoGatesError(no_gates_message(spec.name, found.rejected))
    # a registry network is a classifier head (no probe forward): only its graph or last module can say otherwise
    outputs, how = detect_outputs(model)
    return LoadedModel(name=spec.name, model=model, transform=spec.preprocess.transform(),
                       class_names=spec.class_names, wnids=spec.class_wnids, blocks=found.blocks, device=dev,
                       weights_source=source, weights_id=weights_id, spec=spec, rejected=dict(found.rejected),
                       outputs=outputs, outputs_found=how)


def no_gates_message(name: str, rejected: dict[str, str], limit: int = 6) -> str:
    """Why ``name`` is refused: no gate found, and what was considered and rejected (the first ``limit``)."""
    text = (f"{name} has no channel gate to look at: no SE / ESE / ECA / GatherExcite / GlobalContext gate module "
            "and no inline x * sigmoid(pool(x)) gate was found")
    if rejected:
        shown = "; ".join(f"{path or '<model>'}: {why}" for path, why in list(rejected.items())[:limit])
        more = f" (and {len(rejected) - limit} more)" if len(rejected) > limit else ""
        text += f". Considered and rejected: {shown}{more}"
    else:
        text += " (nothing gate-like was considered)"
    return text + ". `python -m senet_viz models --all` lists the timm / torchvision architectures with gates."
