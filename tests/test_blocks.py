"""SE block discovery and naming (blocks.py) on the zoo's networks (random weights) and on tiny nets."""

from __future__ import annotations

import pytest
import torch
from tiny_nets import TINY_SERESNET_NAMES, make_tiny_custom, make_tiny_decoy, make_tiny_seresnet
from torch import nn

from senet_viz.gates.blocks import BlockSelectionError, discover_se_blocks, find_se_blocks, select_blocks
from senet_viz.gates.capture import ablate, hook_count
from senet_viz.gates.kinds import SEBlock
from senet_viz.models.registry import REGISTRY, get_spec

SERESNET50_NAMES = ([f"SE_2_{i}" for i in range(1, 4)] + [f"SE_3_{i}" for i in range(1, 5)]
                    + [f"SE_4_{i}" for i in range(1, 7)] + [f"SE_5_{i}" for i in range(1, 4)])
MNV3_SMALL_NAMES = ["SE_2_1", "SE_4_1", "SE_4_2", "SE_4_3", "SE_4_4", "SE_4_5", "SE_5_1", "SE_5_2", "SE_5_3"]
BIG_MODELS = {"legacy_senet154", "legacy_seresnet152", "legacy_seresnext101_32x4d"}


@pytest.fixture(scope="module")
def seresnet50() -> tuple[nn.Module, list[SEBlock]]:
    model = get_spec("legacy_seresnet50").build().eval()
    return model, find_se_blocks(model, (3, 224, 224))


# ------------------------------------------------------------------------------------- zoo networks


@pytest.mark.slow
def test_legacy_seresnet50_has_the_papers_16_blocks(seresnet50):
    model, blocks = seresnet50
    assert [b.name for b in blocks] == SERESNET50_NAMES
    # paper stage s = timm layer{s-1}; conv2_x..conv5_x have 3, 4, 6, 3 blocks with 256..2048 channels
    for b in blocks:
        assert b.path == f"layer{b.stage - 1}.{b.index - 1}.se_module"
        assert b.gate_path == f"{b.path}.sigmoid"
        assert b.channels == {2: 256, 3: 512, 4: 1024, 5: 2048}[b.stage]
        assert b.kind == "timm-legacy"
        assert b.gate_fn == "Sigmoid"
    assert [b.order for b in blocks] == list(range(16))
    # an SE block with r = 16 has 2 C^2 / 16 weights plus C/16 + C biases
    c = 2048
    assert blocks[-1].params == 2 * c * (c // 16) + c // 16 + c


@pytest.mark.parametrize("name", ["tf_mobilenetv3_small_100", "mobilenet_v3_small"])
def test_mobilenetv3_small_has_nine_blocks(name):
    spec = get_spec(name)
    blocks = find_se_blocks(spec.build().eval(), (3, 224, 224))
    assert [b.name for b in blocks] == MNV3_SMALL_NAMES
    assert {b.gate_fn.lower() for b in blocks} == {"hardsigmoid"}
    assert [b.channels for b in blocks] == [16, 96, 240, 240, 120, 144, 288, 576, 576]


def _registry_params():
    return [pytest.param(n, marks=pytest.mark.slow) if n in BIG_MODELS else n for n in REGISTRY]


@pytest.mark.slow
@pytest.mark.parametrize("name", _registry_params())
def test_every_zoo_model_has_consistent_se_blocks(name):
    spec = get_spec(name)
    model = spec.build().eval()
    discovery = discover_se_blocks(model, (3, spec.preprocess.crop, spec.preprocess.crop))
    blocks = discovery.blocks
    assert blocks, f"{name}: no SE block found (rejected: {discovery.rejected})"
    assert len({b.name for b in blocks}) == len(blocks), "block names must be unique"
    assert len({b.gate_path for b in blocks}) == len(blocks)
    modules = dict(model.named_modules())

    # Watch every gate in a forward of our own: its output must be a per-channel gate in [0, 1] of width C.
    widths: dict[str, tuple[int, float, float]] = {}
    handles = []
    for b in blocks:
        assert b.gate_path in modules and b.gate_path.startswith(b.path + ".")
        gate = modules[b.gate_path]
        assert "sigmoid" in type(gate).__name__.lower(), f"{b.gate_path} is a {type(gate).__name__}"
        handles.append(gate.register_forward_hook(
            lambda _m, _i, out, n=b.name: widths.__setitem__(n, (out.shape[1], out.min().item(), out.max().item()))))
    try:
        with torch.inference_mode():
            model(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    finally:
        for h in handles:
            h.remove()

    per_stage: dict[int, list[int]] = {}
    for position, b in enumerate(blocks):
        width, lo, hi = widths[b.name]
        assert b.channels == width, f"{b.name}: channels {b.channels} but the gate outputs {width}"
        assert 0.0 <= lo <= hi <= 1.0
        se_params = sum(p.numel() for p in modules[b.path].parameters())
        assert b.params == se_params > 0
        assert b.params <= 2 * b.channels * b.channels + 2 * b.channels  # a bottleneck C -> C/r -> C
        assert b.order == position
        assert b.name == f"SE_{b.stage}_{b.index}"
        per_stage.setdefault(b.stage, []).append(b.index)
    assert all(idx == list(range(1, len(idx) + 1)) for idx in per_stage.values())
    assert [b.stage for b in blocks] == sorted(b.stage for b in blocks), "stages must not decrease with depth"
    assert 1 <= blocks[0].stage and blocks[-1].stage <= 6


# ------------------------------------------------------------------------------------------ tiny nets


def test_paper_style_tiny_seresnet_is_named_like_the_paper(tiny_seresnet):
    blocks = tiny_seresnet.blocks
    assert [b.name for b in blocks] == TINY_SERESNET_NAMES
    assert [b.path for b in blocks][:3] == ["layer1.0.se", "layer2.0.se", "layer2.1.se"]
    assert {b.kind for b in blocks} == {"timm"}
    assert [b.channels for b in blocks] == [16, 32, 32, 48, 48, 64, 64]


def test_structural_discovery_finds_a_users_own_se_class(tiny_custom):
    blocks = tiny_custom.blocks
    assert [b.path for b in blocks] == ["gate1", "gate2", "gate3"]
    assert [b.gate_path for b in blocks] == ["gate1.sigmoid", "gate2.sigmoid", "gate3.sigmoid"]
    assert {b.kind for b in blocks} == {"structural"}
    # stride 2, 4, 8 at the three gates of a 32x32 input
    assert [b.name for b in blocks] == ["SE_1_1", "SE_2_1", "SE_3_1"]
    assert [b.channels for b in blocks] == [16, 32, 32]
    assert blocks[0].params == (16 * 4 + 4) + (4 * 16 + 16)


def test_structural_discovery_rejects_a_spatial_sigmoid_with_a_reason():
    model = make_tiny_decoy()
    discovery = discover_se_blocks(model, (3, 32, 32))
    assert [b.path for b in discovery.blocks] == ["se"]
    assert "decoy" in discovery.rejected
    reason = discovery.rejected["decoy"]
    assert "gate output" in reason and "(1, 1, 8, 8)" in reason
    assert all("decoy" not in b.gate_path for b in discovery.blocks)


def test_an_se_module_never_called_is_rejected_not_guessed():
    model = make_tiny_custom()
    from tiny_nets import ChannelGate

    model.unused = ChannelGate(32)  # registered but not in forward()
    discovery = discover_se_blocks(model, (3, 32, 32))
    assert "unused" in discovery.rejected
    assert [b.path for b in discovery.blocks] == ["gate1", "gate2", "gate3"]


class SELayerLinear(nn.Module):
    """The classic hand-written SELayer: FCs and sigmoid in an nn.Sequential fed with the pooled N x C."""

    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(c, c // r, bias=False), nn.ReLU(), nn.Linear(c // r, c, bias=False),
                                nn.Sigmoid())

    def forward(self, x):
        n, c = x.shape[:2]
        return x * self.fc(self.avg_pool(x).view(n, c)).view(n, c, 1, 1)


class SELayerConv(nn.Module):
    """Pooling outside, 1x1 convs and sigmoid in an nn.Sequential fed with N x C x 1 x 1."""

    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Conv2d(c, c // r, 1), nn.ReLU(), nn.Conv2d(c // r, c, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.fc(self.pool(x))


class SELayerAllInOne(nn.Module):
    """Everything but the multiply in one nn.Sequential (pool, 1x1 convs, sigmoid)."""

    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // r, 1), nn.ReLU(), nn.Conv2d(c // r, c, 1),
                                nn.Sigmoid())

    def forward(self, x):
        return x * self.fc(x)


@pytest.mark.parametrize("se_class", [SELayerLinear, SELayerConv, SELayerAllInOne])
def test_hand_written_se_with_its_bottleneck_in_a_sequential(se_class):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), se_class(16), nn.Conv2d(16, 32, 3, 2, 1), se_class(32),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    discovery = discover_se_blocks(model, (3, 32, 32))
    blocks = discovery.blocks
    # the SE module is the wrapper that takes the feature map and rescales it, at strides 2 and 4
    assert [b.path for b in blocks] == ["1", "3"], discovery.rejected
    sigmoid = len(model[1].fc) - 1
    assert [b.gate_path for b in blocks] == [f"1.fc.{sigmoid}", f"3.fc.{sigmoid}"]
    assert [b.name for b in blocks] == ["SE_1_1", "SE_2_1"]
    assert [b.channels for b in blocks] == [16, 32]
    assert [b.params for b in blocks] == [sum(p.numel() for p in model[i].parameters()) for i in (1, 3)]
    assert discovery.rejected == {}
    assert hook_count(model) == 0

    x = torch.randn(2, 3, 32, 32)
    reference = nn.Sequential(*[nn.Identity() if i == 3 else m for i, m in enumerate(model)]).eval()
    with ablate(model, blocks[1:]):
        got = model(x)
    assert torch.allclose(got, reference(x).detach(), atol=1e-6)


def test_a_gate_inside_a_block_with_its_own_weights_is_not_promoted_to_the_block():
    """The multiply may live in a residual block's forward; the block (with convs of its own) must not be
    taken for the SE module. The inner Sequential is reported instead of guessed."""

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, 1, 1)
            self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // 4, 1), nn.ReLU(),
                                    nn.Conv2d(c // 4, c, 1), nn.Sigmoid())

        def forward(self, x):
            out = self.conv(x)
            return x + out * self.se(out)

    model = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), Block(16)).eval()
    discovery = discover_se_blocks(model, (3, 32, 32))
    assert discovery.blocks == []
    assert "1.se" in discovery.rejected


# -------------------------------------------------------------------------------------- side effects


@pytest.mark.parametrize("training", [True, False])
def test_discovery_leaves_no_hook_and_keeps_the_training_flag(training):
    model = make_tiny_seresnet()
    model.train(training)
    user_hook = model.layer1.register_forward_hook(lambda *_: None)  # a hook of the user's own stays
    state = {k: v.clone() for k, v in model.state_dict().items()}
    blocks = find_se_blocks(model, (3, 64, 64))
    assert len(blocks) == 7
    assert hook_count(model) == 1
    user_hook.remove()
    assert hook_count(model) == 0
    assert all(m.training is training for m in model.modules())
    # a discovery forward in eval mode does not touch batch-norm statistics, even for a training model
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_discovery_leaves_no_hook_when_the_forward_fails():
    model = make_tiny_seresnet().train()
    with pytest.raises(RuntimeError):
        find_se_blocks(model, (1, 64, 64))  # wrong channel count: the stem conv raises
    assert hook_count(model) == 0
    assert model.training


# ----------------------------------------------------------------------------------------- selection


def _names(blocks: list[SEBlock]) -> list[str]:
    return [b.name for b in blocks]


def test_select_by_name_path_stage_last_and_all(seresnet50):
    _, blocks = seresnet50
    assert _names(select_blocks(blocks, "SE_5_2")) == ["SE_5_2"]
    assert _names(select_blocks(blocks, "layer4.1.se_module")) == ["SE_5_2"]
    assert _names(select_blocks(blocks, "stage:5")) == ["SE_5_1", "SE_5_2", "SE_5_3"]
    assert _names(select_blocks(blocks, "stage:3,4,5")) == SERESNET50_NAMES[3:]
    assert _names(select_blocks(blocks, "stage:4-5")) == SERESNET50_NAMES[7:]
    assert _names(select_blocks(blocks, "last:3")) == ["SE_5_1", "SE_5_2", "SE_5_3"]
    assert _names(select_blocks(blocks, "first:2")) == ["SE_2_1", "SE_2_2"]
    assert _names(select_blocks(blocks, "all")) == SERESNET50_NAMES
    # mixed items, a list, spaces; the result is in model order without duplicates
    assert _names(select_blocks(blocks, "SE_5_1, SE_2_1,stage:5")) == ["SE_2_1", "SE_5_1", "SE_5_2", "SE_5_3"]
    assert _names(select_blocks(blocks, ["SE_3_2", "layer1.0.se_module"])) == ["SE_2_1", "SE_3_2"]
    assert _names(select_blocks(blocks, "stage:2,SE_5_3")) == ["SE_2_1", "SE_2_2", "SE_2_3", "SE_5_3"]
    assert select_blocks(blocks, None) == [] and select_blocks(blocks, "") == []


@pytest.mark.parametrize(("spec", "fragments"), [
    ("SE_9_9", ["SE_9_9", "SE_2_1", "stage:N"]),
    ("layer9.se", ["layer9.se"]),
    ("stage:7", ["7", "[2, 3, 4, 5]"]),
    ("stage:3,4,8", ["8", "[2, 3, 4, 5]"]),
    ("stage:five", ["five", "[2, 3, 4, 5]"]),
    ("last:17", ["16"]),
    ("last:x", ["last:x"]),
])
def test_select_unknown_names_and_stages_raise_helpful_errors(seresnet50, spec, fragments):
    _, blocks = seresnet50
    with pytest.raises(BlockSelectionError) as info:
        select_blocks(blocks, spec)
    assert isinstance(info.value, ValueError)
    for fragment in fragments:
        assert fragment in str(info.value)
