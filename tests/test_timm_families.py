"""Every channel gate of real timm architectures is found, named and captured (random weights, small inputs).

The ground truth is counted independently of blocks.py: ``isinstance`` over ``model.modules()`` against timm's own
gate classes (SE, ESE, ECA, CECA, gather-excite, global context with a scale, CBAM's channel half, the
EfficientNet-family SqueezeExcite, the legacy SENet SEModule, PP-HGNet's EseModule). Architectures whose only
attention is not SE (ResNeSt's split attention, SKNet's selective kernel, GCNet blocks that only add their
context) must have no block and report every such module in ``rejected``. The big networks are marked slow.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
import timm
import torch
from timm.layers import (
    CecaModule,
    EcaModule,
    EffectiveSEModule,
    GatherExcite,
    GlobalContext,
    SelectiveKernel,
    SEModule,
    SplitAttn,
)
from timm.layers.cbam import ChannelAttn
from timm.layers.squeeze_excite import SqueezeExciteCl
from timm.models._efficientnet_blocks import SqueezeExcite
from timm.models.hgnet import EseModule
from timm.models.senet import SEModule as LegacySEModule

from senet_viz.gates.blocks import discover_se_blocks
from senet_viz.gates.capture import capture, hook_count

GATE_CLASSES: dict[type, str] = {
    SEModule: "se", SqueezeExcite: "se", LegacySEModule: "se", SqueezeExciteCl: "se",
    EffectiveSEModule: "ese", EseModule: "ese", EcaModule: "eca", CecaModule: "ceca",
    GatherExcite: "gather_excite", GlobalContext: "global_context", ChannelAttn: "cbam_channel",
}
NOT_SE_CLASSES = (SplitAttn, SelectiveKernel)

# name: (family, slow)
MODELS = {
    "seresnet18": ("SE-ResNet", False),
    "legacy_seresnet18": ("legacy SENet", False),
    "seresnext26d_32x4d": ("SE-ResNeXt", False),
    "efficientnet_b0": ("EfficientNet", False),
    "tf_efficientnetv2_b0": ("EfficientNetV2", False),
    "mobilenetv3_small_100": ("MobileNetV3", False),
    "rexnet_100": ("ReXNet", False),
    "regnety_002": ("RegNetY", False),
    "regnetz_b16": ("RegNetZ", False),
    "mixnet_s": ("MixNet", False),
    "fbnetv3_b": ("FBNetV3", False),
    "lcnet_050": ("PP-LCNet", False),
    "ghostnet_100": ("GhostNet", False),
    "ghostnetv2_100": ("GhostNetV2", False),
    "repghostnet_050": ("RepGhostNet", False),
    "hgnet_tiny": ("PP-HGNet (EseModule)", False),
    "ese_vovnet19b_dw": ("VoVNet-ESE", False),
    "cspnext_s": ("CSPNeXt (ESE)", False),
    "eca_resnet33ts": ("ECA ByobNet", False),
    "gc_efficientnetv2_rw_t": ("GC-EfficientNetV2", False),
    "semnasnet_050": ("MnasNet-SE", False),
    "tinynet_e": ("TinyNet", False),
    "hardcorenas_a": ("HardCoReNAS", False),
    "nf_regnet_b0": ("NF-RegNet", False),
    "gcresnet33ts": ("GCNet, context added only", False),
    "resnest14d": ("ResNeSt (not SE)", False),
    "skresnet18": ("SKNet (not SE)", False),
    "fbnetc_100": ("FBNet-C (no gate)", False),
    "mobilenetv4_conv_small": ("MobileNetV4 (no gate)", False),
    "ecaresnet26t": ("ECA-ResNet", True),
    "ecaresnetlight": ("ECA-ResNet light", True),
    "eca_nfnet_l0": ("ECA-NFNet", True),
    "nfnet_f0": ("NFNet", True),
    "dm_nfnet_f0": ("DM-NFNet", True),
    "rdnet_tiny": ("RDNet (ESE)", True),
    "cs3se_edgenet_x": ("CSP SE-EdgeNet", True),
    "tresnet_m": ("TResNet", True),
    "coatnet_0_rw_224": ("CoAtNet", True),
    "maxvit_nano_rw_256": ("MaxViT", True),
    "senet154": ("SENet-154", True),
    "seresnext50_32x4d": ("SE-ResNeXt-50", True),
    "efficientnet_b3": ("EfficientNet-B3", True),
}
NO_GATE = {"gcresnet33ts", "resnest14d", "skresnet18", "fbnetc_100", "mobilenetv4_conv_small"}


def _build(name: str) -> torch.nn.Module:
    kwargs = {"img_size": 64} if name.startswith(("maxvit", "coatnet", "maxxvit")) else {}
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def ground_truth(model: torch.nn.Module) -> tuple[Counter, list[str]]:
    """Gate kinds counted from timm's classes, and the paths of look-alikes that must be rejected."""
    kinds: Counter = Counter()
    look_alikes = []
    for path, m in model.named_modules():
        if isinstance(m, NOT_SE_CLASSES) or (isinstance(m, GlobalContext) and m.mlp_scale is None):
            look_alikes.append(path)
            continue
        for cls, kind in GATE_CLASSES.items():
            if type(m) is cls:
                kinds[kind] += 1
    return kinds, look_alikes


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if slow else n
                                  for n, (_, slow) in MODELS.items()])
@pytest.mark.slow
def test_every_gate_is_found_named_and_captured(name):
    model = _build(name)
    size = (3, 64, 64)
    truth, look_alikes = ground_truth(model)
    discovery = discover_se_blocks(model, size)
    blocks = discovery.blocks
    assert Counter(b.gate_kind for b in blocks) == truth, discovery.rejected
    assert (sum(truth.values()) == 0) == (name in NO_GATE)
    assert all(p in discovery.rejected for p in look_alikes)

    names = [b.name for b in blocks]
    assert len(set(names)) == len(names) and len({b.gate_path for b in blocks}) == len(blocks)
    assert all(re.fullmatch(rf"SE_{b.stage}_{b.index}", b.name) for b in blocks)
    assert [b.stage for b in blocks] == sorted(b.stage for b in blocks)
    modules = dict(model.named_modules())
    for b in blocks:  # an NFNet block scales its SE by attn_gain: removal must undo it
        parent, _, child = b.path.rpartition(".")
        expected = getattr(modules.get(parent), "attn_gain", 1.0) if child in ("attn", "attn_last") else 1.0
        assert b.gain == float(expected)

    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
    with capture(model, blocks) as rec:
        model(x)
    gates = rec.gates
    for b in blocks:
        assert gates[b.name].shape == (2, b.channels), b.name
    assert hook_count(model) == 0


@pytest.mark.slow
def test_gate_census_counts_without_weights_and_caches(tmp_path):
    from senet_viz.gates.census import gate_census

    names = ["seresnet18", "hgnet_tiny", "ecaresnet26t", "resnest14d", "gcresnet33ts", "convnext_atto",
             "torchvision:mobilenet_v3_small", "torchvision:resnet18", "torchvision:regnet_y_400mf"]
    cache = tmp_path / "census.json"
    seen = []
    result = gate_census(names, cache=cache, progress=lambda i, n, name: seen.append(name))
    assert result["built"] == len(names) == len(seen) and result["errors"] == {}
    models = result["models"]
    assert models["timm:seresnet18"]["kinds"] == {"se": 8}
    assert models["timm:hgnet_tiny"]["kinds"] == {"ese": 5}
    assert models["timm:ecaresnet26t"]["kinds"] == {"eca": 8}
    assert models["torchvision:mobilenet_v3_small"]["kinds"] == {"se": 9}
    assert models["torchvision:regnet_y_400mf"]["gates"] == 16
    assert models["timm:resnest14d"]["gates"] == 0 and models["timm:resnest14d"]["not_se"] == {"SplitAttn": 4}
    assert models["timm:gcresnet33ts"]["not_se"] == {"GlobalContext(fuse_add only)": 10}
    assert "timm:convnext_atto" not in models and "torchvision:resnet18" not in models  # no gate, no look-alike
    assert result["per_kind"]["se"] == {"models": 3, "gates": 8 + 9 + 16}
    # the counts agree with a forward-checked discovery on a real build
    model = _build("hgnet_tiny")
    assert len(discover_se_blocks(model, (3, 64, 64)).blocks) == 5
    again = gate_census(names, cache=cache)
    assert again["built"] == 0 and again["models"] == models
