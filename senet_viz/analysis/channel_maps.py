"""Where in an image one SE channel's input is strongest: the channel's map of the SE block's *input*.

The SE block squeezes its input ``x`` (N, C, h, w) by global average pooling and excites channel c by a gate
computed from every channel's mean; ``x[:, c]`` is the feature map the gate then scales. :func:`pregate_maps` runs a
few images through the network with a forward pre-hook on the SE module that copies that one channel's map, and
upsamples it (bilinear) to the model's input size, so it lies over the crop the model saw (:func:`display_image`).

The hook lives only inside a ``with``-style ``try`` / ``finally`` under the model's lock (as in
:mod:`senet_viz.gates.capture`): it is removed also when the forward raises, and the model, which may be the app's
cached one shared by every session, is never edited.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from senet_viz.gates.capture import model_lock
from senet_viz.gates.kinds import SEBlock
from senet_viz.models.loaded import LoadedModel


def display_image(loaded: LoadedModel, image: Image.Image) -> np.ndarray:
    """The RGB crop the model sees of ``image`` (its preprocessing's resize and center crop, before normalising),
    as uint8 (H, W, 3); a transform without that geometry gets the image resized to the input size."""
    geometry = getattr(loaded.transform, "geometry", None)
    if geometry is not None:
        shown = geometry(image)
    else:
        _, h, w = loaded.input_size
        shown = image.resize((w, h))
    return np.asarray(shown.convert("RGB"))


def pregate_maps(loaded: LoadedModel, pixels: torch.Tensor | Sequence[torch.Tensor], block: SEBlock,
                 channel: int) -> tuple[np.ndarray, np.ndarray]:
    """Channel ``channel`` of ``block``'s SE input for each image of ``pixels`` (model-ready, (N, 3, H, W) or a list
    of (3, H, W)): ``(maps (N, H, W) float32 upsampled to the input, squeezed (N,) the map's spatial mean, what the
    SE block pools)``. Raises ValueError when the block has no 4-D input of its channels (e.g. a gate found inside
    a traced graph)."""
    if not 0 <= int(channel) < block.channels:
        raise ValueError(f"channel {channel} is out of range: {block.name} has {block.channels} channels")
    x = torch.stack(list(pixels)) if not isinstance(pixels, torch.Tensor) else pixels
    if x.dim() == 3:
        x = x.unsqueeze(0)
    model = loaded.model
    try:
        module = model.get_submodule(block.path)
    except AttributeError as exc:
        raise ValueError(f"{block.name}: no module at '{block.path}' to hook its input") from exc
    seen: dict[str, torch.Tensor] = {}

    def hook(_module, inputs) -> None:
        if "map" not in seen and inputs and isinstance(inputs[0], torch.Tensor):
            seen["map"] = inputs[0].detach()[:, int(channel)].float().clone() if inputs[0].dim() == 4 \
                and inputs[0].shape[1] == block.channels else inputs[0].detach().new_zeros(0)

    with model_lock(model):
        handle = module.register_forward_pre_hook(hook)
        try:
            with torch.inference_mode():
                model(x.to(loaded.device))
        finally:
            handle.remove()
    found = seen.get("map")
    if found is None or found.dim() != 3:
        raise ValueError(f"{block.name}: its SE module's input is not an (N, {block.channels}, H, W) feature map")
    squeezed = found.mean(dim=(1, 2))
    maps = F.interpolate(found.unsqueeze(1), size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    return maps.cpu().numpy().astype(np.float32), squeezed.cpu().numpy().astype(np.float32)
