"""Every kind of channel gate (blocks.py): found, named, labelled, captured, removed honestly, costed.

Tiny timm networks built in code (random weights, a few milliseconds per forward) carry each gate kind: SE, ESE
(single 1x1 conv), ECA / CECA (1-D conv over channels), gather-excite, global context, CBAM's channel half, an NFNet
block with ``attn_gain``. For each, identity ablation must equal the network with the gate module *removed* (and,
for NFNet, its gain set to 1), and mean ablation the network with the module replaced by a fixed per-channel scale.
Look-alikes that are not SE (split attention, selective kernel, CBAM's spatial half, a gather-excite with a local
extent, a global context that only adds) are reported in ``rejected`` with a reason. Inline gates written in a
``forward`` are found through torch.fx.
"""

from __future__ import annotations

import copy
from functools import partial

import numpy as np
import pytest
import torch
from timm.layers import CecaModule, EcaModule, EffectiveSEModule, GatherExcite, GlobalContext, SEModule
from timm.layers.cbam import CbamModule
from timm.models.nfnet import NfCfg, NormFreeNet
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from senet_viz.analysis.cost import model_cost
from senet_viz.gates.blocks import discover, discover_se_blocks, find_se_blocks
from senet_viz.gates.capture import ablate, capture, hook_count
from senet_viz.gates.fx import GateProbe, trace_gates
from senet_viz.gates.kinds import NOT_SE

SIZE = (3, 64, 64)


def tiny_resnet(attn_layer, seed: int = 0) -> nn.Module:
    """A ResNet with one BasicBlock per stage (16..64 channels) and ``attn_layer`` in every block."""
    torch.manual_seed(seed)
    model = ResNet(BasicBlock, (1, 1, 1, 1), num_classes=10, channels=(16, 32, 48, 64), stem_width=16,
                   zero_init_last=False, block_args={"attn_layer": attn_layer})
    return _randomise_norms(model).eval()


def tiny_nfnet(attn_layer: str = "se", seed: int = 0) -> nn.Module:
    """An NFNet (NormFreeBlock, attn_gain 2) with one block per stage; conv gains set to 1 (timm initialises the
    last conv of each block to 0, which would silence the residual branch and its SE)."""
    torch.manual_seed(seed)
    cfg = NfCfg(depths=(1, 1, 1, 1), channels=(32, 64, 96, 128), stem_chs=16, attn_layer=attn_layer,
                attn_kwargs={"rd_ratio": 0.5} if attn_layer == "se" else {}, act_layer="silu")
    model = NormFreeNet(cfg, num_classes=10)
    for name, p in model.named_parameters():
        if name.endswith(".gain"):
            nn.init.ones_(p)
    return model.eval()


def _randomise_norms(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


class Scale(nn.Module):
    def __init__(self, vec: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("vec", torch.as_tensor(vec, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return x * self.vec


def _replaced(model: nn.Module, paths_to_modules: dict[str, nn.Module], gain: float | None = None) -> nn.Module:
    ref = copy.deepcopy(model)
    for path, module in paths_to_modules.items():
        parent_path, _, child = path.rpartition(".")
        parent = ref.get_submodule(parent_path)
        setattr(parent, child, module)
        if gain is not None:
            parent.attn_gain = gain
    return ref.eval()


@pytest.fixture(autouse=True)
def constructible_gather_excite(monkeypatch):
    """timm 1.0.31's GatherExcite.__init__ passes ``*dd`` (the keys 'device', 'dtype') positionally to ConvMlp and
    cannot be constructed at all (no timm model uses it); drop those stray positionals while building."""
    import timm.layers.gather_excite as ge

    real = ge.ConvMlp
    monkeypatch.setattr(ge, "ConvMlp", lambda c, h, *_stray, **kw: real(c, h, **kw))


def _x(n: int = 3) -> torch.Tensor:
    return torch.randn(n, *SIZE, generator=torch.Generator().manual_seed(0))


KINDS = [
    pytest.param(SEModule, SEModule, "se", id="se"),
    pytest.param(EffectiveSEModule, EffectiveSEModule, "ese", id="ese"),
    pytest.param(EcaModule, EcaModule, "eca", id="eca"),
    pytest.param(CecaModule, CecaModule, "ceca", id="ceca"),
    pytest.param(GatherExcite, GatherExcite, "gather_excite", id="gather_excite"),
    pytest.param(GlobalContext, GlobalContext, "global_context", id="global_context"),
    pytest.param(partial(CbamModule, rd_ratio=0.25), nn.Module, "cbam_channel", id="cbam_channel"),
]


@pytest.mark.parametrize(("attn", "cls", "kind"), KINDS)
def test_each_gate_kind_is_found_named_captured_and_removed_honestly(attn, cls, kind):
    model = tiny_resnet(attn)
    discovery = discover_se_blocks(model, SIZE)
    blocks = discovery.blocks
    assert [b.name for b in blocks] == ["SE_2_1", "SE_3_1", "SE_4_1", "SE_5_1"], discovery.rejected
    assert {b.gate_kind for b in blocks} == {kind}
    assert {b.kind for b in blocks} == {"timm"}
    assert [b.channels for b in blocks] == [16, 32, 48, 64]
    assert all(b.gain == 1.0 and b.identity_gate == 1.0 for b in blocks)
    modules = dict(model.named_modules())
    for b in blocks:
        assert b.params == sum(p.numel() for p in modules[b.path].parameters()) > 0
        if kind != "cbam_channel":
            assert isinstance(modules[b.path], cls)

    x = _x()
    with capture(model, blocks) as rec:
        model(x)
    for b in blocks:
        gates = rec.gates[b.name].astype(np.float32)
        assert gates.shape == (3, b.channels)
        assert 0.0 <= gates.min() <= gates.max() <= 1.0 and gates.std() > 0

    # identity: the network with each gate module taken out (CBAM: its channel half taken out)
    with ablate(model, blocks, "identity"):
        got = model(x)
    removed = _replaced(model, {b.path: nn.Identity() for b in blocks})
    assert torch.allclose(got, removed(x).detach(), atol=1e-5)
    # mean: the gate frozen to a constant per-channel scale
    means = {b.name: np.linspace(0.2, 0.9, b.channels, dtype=np.float32) for b in blocks}
    with ablate(model, blocks, "mean", means):
        got = model(x)
    scaled = _replaced(model, {b.path: Scale(means[b.name]) for b in blocks})
    assert torch.allclose(got, scaled(x).detach(), atol=1e-5)
    assert not torch.allclose(got, removed(x).detach(), atol=1e-3)
    assert hook_count(model) == 0


@pytest.mark.parametrize("attn", ["se", "eca"])
def test_nfnet_attn_gain_is_cancelled_by_identity_removal(attn):
    """NormFreeBlock computes attn_gain * attn(x); removing the SE must leave x, not 2 x."""
    model = tiny_nfnet(attn)
    blocks = find_se_blocks(model, SIZE)
    assert len(blocks) == 4 and {b.gate_kind for b in blocks} == {attn}
    assert {b.gain for b in blocks} == {2.0} and {b.identity_gate for b in blocks} == {0.5}
    assert all(b.path.endswith(".attn_last") for b in blocks)
    x = _x()
    with torch.no_grad():
        with ablate(model, blocks, "identity"):
            got = model(x)
        removed = _replaced(model, {b.path: nn.Identity() for b in blocks}, gain=1.0)
        assert torch.allclose(got, removed(x), atol=1e-5)
        naive = _replaced(model, {b.path: nn.Identity() for b in blocks})  # gate 1 with the gain left: 2 x
        assert not torch.allclose(got, naive(x), atol=1e-3)
        # captured gates are the sigmoid's own output, in [0, 1]
        with capture(model, blocks) as rec:
            model(x)
    assert all(0 <= g.min() and g.max() <= 1 for g in rec.gates.values())


def test_nfnet_gain_is_found_in_a_traced_graph_too():
    model = tiny_nfnet("se")
    traced, discovery = trace_gates(model, SIZE)
    assert {b.gain for b in discovery.blocks} == {2.0}
    assert [b.gate_path for b in discovery.blocks] == [b.gate_path for b in find_se_blocks(model, SIZE)]
    x = _x()
    with torch.no_grad(), ablate(traced, discovery.blocks):
        got = traced(x)
    removed = _replaced(model, {b.path: nn.Identity() for b in discovery.blocks}, gain=1.0)
    assert torch.allclose(got, removed(x).detach(), atol=1e-5)


@pytest.mark.parametrize(("attn", "fragment"), [
    (partial(GatherExcite, extent=2), "one gate per channel and position"),
    (partial(GlobalContext, fuse_add=True, fuse_scale=False), "GlobalContext without fuse_scale"),
])
def test_gates_that_are_not_per_channel_are_rejected_with_a_reason(attn, fragment):
    model = tiny_resnet(attn)
    # 128 px: even the last stage (4 x 4) is larger than gather-excite's extent-2 window
    discovery = discover_se_blocks(model, (3, 128, 128))
    assert discovery.blocks == []
    assert len(discovery.rejected) == 4
    assert all(fragment in reason for reason in discovery.rejected.values()), discovery.rejected


def test_cbam_spatial_half_is_rejected_and_its_channel_half_kept():
    model = tiny_resnet(partial(CbamModule, rd_ratio=0.25))
    discovery = discover_se_blocks(model, SIZE)
    assert [b.path for b in discovery.blocks] == [f"layer{i}.0.se.channel" for i in range(1, 5)]
    spatial = {p: r for p, r in discovery.rejected.items() if p.endswith(".spatial")}
    assert len(spatial) == 4 and all("per position" in r for r in spatial.values())


@pytest.mark.parametrize(("name", "cls"), [("resnest14d", "SplitAttn"), ("skresnet18", "SelectiveKernel")])
def test_softmax_branch_attention_is_reported_not_counted(name, cls):
    import timm

    model = timm.create_model(name, pretrained=False).eval()
    discovery = discover_se_blocks(model, SIZE)
    assert discovery.blocks == []
    instances = [p for p, m in model.named_modules() if type(m).__name__ == cls]
    assert instances and all(p in discovery.rejected for p in instances)
    assert all("softmax" in discovery.rejected[p] for p in instances)
    assert "softmax" in NOT_SE[cls]


def test_a_users_own_single_conv_gate_is_found_structurally_as_ese():
    class MyESE(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.fc = nn.Conv2d(c, c, 1)
            self.act = nn.Hardsigmoid()

        def forward(self, x):
            return x * self.act(self.fc(x.mean((2, 3), keepdim=True)))

    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), MyESE(8), nn.Conv2d(8, 16, 3, 2, 1), MyESE(16)).eval()
    blocks = find_se_blocks(model, (3, 32, 32))
    assert [(b.path, b.kind, b.gate_kind) for b in blocks] == [("1", "structural", "ese"), ("3", "structural", "ese")]


def test_a_users_class_named_like_timms_is_not_taken_for_timms():
    class SEModule(nn.Module):  # same name and children as timm's legacy SE, but a user's own class
        def __init__(self, c):
            super().__init__()
            self.fc1 = nn.Conv2d(c, c // 4, 1)
            self.relu = nn.ReLU()
            self.fc2 = nn.Conv2d(c // 4, c, 1)
            self.sigmoid = nn.Sigmoid()

        def forward(self, x):
            return x * self.sigmoid(self.fc2(self.relu(self.fc1(x.mean((2, 3), keepdim=True)))))

    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), SEModule(8)).eval()
    assert [b.kind for b in find_se_blocks(model, (3, 32, 32))] == ["structural"]


def test_cost_per_kind():
    model = tiny_resnet(EcaModule)
    blocks = find_se_blocks(model, SIZE)
    report = model_cost(model, blocks, blocks[:2], SIZE)
    kinds = report.kinds()
    assert list(kinds["gate_kind"]) == ["eca"]
    row = kinds.iloc[0]
    assert row["blocks"] == 4 and row["removed"] == 2
    assert row["params"] == sum(b.params for b in blocks) == 4 * 3  # one 3-tap conv1d per block, no bias
    # a 3-tap conv over C channels: 3 C MACs per block
    assert row["macs"] == 3 * (16 + 32 + 48 + 64)
    assert list(report.blocks["gate_kind"]) == ["eca"] * 4
    assert report.to_dict()["kinds"][0]["gate_kind"] == "eca"


# ------------------------------------------------------------------------------------- inline gates (torch.fx)


class InlineSEBlock(nn.Module):
    """A residual block whose SE is written inline in forward(): no SE module to find."""

    def __init__(self, c: int, hard: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)
        self.bn = nn.BatchNorm2d(c)
        self.fc1 = nn.Conv2d(c, c // 4, 1)
        self.fc2 = nn.Conv2d(c // 4, c, 1)
        self.hard = hard

    def gate(self, y):
        z = self.fc2(torch.relu(self.fc1(nn.functional.adaptive_avg_pool2d(y, 1))))
        return nn.functional.hardsigmoid(z) if self.hard else torch.sigmoid(z)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return torch.relu(x + y * self.gate(y))


class InlineNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 2, 1)
        self.block1 = InlineSEBlock(16)
        self.down = nn.Conv2d(16, 32, 3, 2, 1)
        self.block2 = InlineSEBlock(32, hard=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.block2(self.down(self.block1(self.stem(x))))
        return self.head(nn.functional.silu(x).mean((2, 3)))  # x * sigmoid(x): an activation, not a gate


def _inline_net() -> InlineNet:
    torch.manual_seed(0)
    return _randomise_norms(InlineNet()).eval()


def test_inline_se_is_found_through_fx_probed_captured_and_removed():
    model = _inline_net()
    assert discover_se_blocks(model, (3, 32, 32)).blocks == []
    traced, discovery = discover(model, (3, 32, 32))
    blocks = discovery.blocks
    assert discovery.rejected == {}  # the SiLU is no gate and is not reported either
    assert [b.name for b in blocks] == ["SE_1_1", "SE_2_1"]
    assert [(b.kind, b.gate_kind) for b in blocks] == [("fx", "fx_inline")] * 2
    assert [b.path for b in blocks] == ["block1.inline_se1", "block2.inline_se1"]
    assert [b.gate_fn for b in blocks] == ["sigmoid", "hardsigmoid"]
    assert [b.channels for b in blocks] == [16, 32]
    assert [b.params for b in blocks] == [16 * 4 + 4 + 4 * 16 + 16, 32 * 8 + 8 + 8 * 32 + 32]
    modules = dict(traced.named_modules())
    assert all(isinstance(modules[b.gate_path], GateProbe) for b in blocks)
    assert not any(isinstance(m, GateProbe) for m in model.modules())  # the user's model is left as it was

    x = torch.randn(4, 3, 32, 32)
    with capture(traced, blocks) as rec:
        out = traced(x)
    assert torch.allclose(out, model(x).detach(), atol=1e-6)
    with torch.no_grad():
        y1 = model.block1.bn(model.block1.conv(model.stem(x)))
        expected = model.block1.gate(y1).flatten(1).numpy()
    assert np.allclose(rec.gates["SE_1_1"].astype(np.float32), expected, atol=1e-3)  # float16 storage

    class NoSE(InlineSEBlock):
        def forward(self, x):
            return torch.relu(x + self.bn(self.conv(x)))

    plain = copy.deepcopy(model)
    for name in ("block1", "block2"):
        block = getattr(plain, name)
        block.__class__ = NoSE
    with ablate(traced, blocks, "identity"):
        got = traced(x)
    assert torch.allclose(got, plain(x).detach(), atol=1e-5)

    report = model_cost(traced, blocks, blocks, (3, 32, 32))
    assert list(report.blocks["macs"]) == [16 * 4 + 4 * 16, 32 * 8 + 8 * 32]  # two 1x1 convs on a 1x1 map
    assert report.params_removed == sum(b.params for b in blocks)


def test_inline_gate_in_a_block_with_its_own_weights_is_found_by_fx():
    """The case module discovery must reject (tests/test_blocks.py): through fx it is an inline gate."""

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
    traced, discovery = discover(model, (3, 32, 32))
    assert "1.se" in discovery.rejected  # from module discovery, kept beside the fx result
    [block] = discovery.blocks
    assert block.gate_path == "1.se.4" and block.gate_kind == "fx_inline"  # the gate module, hooked as it is
    assert block.params == sum(p.numel() for p in model[1].se.parameters())


def test_inline_look_alikes_are_reported_not_guessed():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, 2, 1)
            self.spatial = nn.Conv2d(8, 1, 1)
            self.alpha = nn.Parameter(torch.zeros(1, 8, 1, 1))

        def forward(self, x):
            x = self.conv(x)
            x = x * torch.sigmoid(self.spatial(x))  # one gate per position
            x = x * torch.sigmoid(self.alpha)  # a learned per-channel scale, not computed from x
            return x.mean((2, 3))

    traced, discovery = trace_gates(Odd().eval(), (3, 32, 32))
    assert discovery.blocks == []
    reasons = list(discovery.rejected.values())
    assert len(reasons) == 2
    assert any("not one value per channel" in r and "(1, 1, 16, 16)" in r for r in reasons)
    assert any("does not depend on the feature map" in r for r in reasons)


@pytest.mark.slow
def test_what_cannot_be_traced_is_reported():
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, 2, 1)

        def forward(self, x):
            y = self.conv(x)
            if y.sum() > 0:  # control flow on values: neither torch.fx nor torch.export can follow it
                return y.mean((2, 3))
            return y.amax((2, 3))

    model = DataDependent().eval()
    same, discovery = discover(model, (3, 32, 32))
    assert same is model and discovery.blocks == []
    assert "<fx>" in discovery.rejected
    assert "cannot trace" in discovery.rejected["<fx>"] and "not searched" in discovery.rejected["<fx>"]


def test_discover_modes():
    model = tiny_resnet(SEModule)
    same, found = discover(model, SIZE)
    assert same is model and len(found.blocks) == 4  # modules found: no tracing
    traced, always = discover(model, SIZE, trace="always")
    assert [(b.name, b.path, b.gate_kind, b.params) for b in always.blocks] == \
        [(b.name, b.path, b.gate_kind, b.params) for b in found.blocks]
    assert {b.kind for b in always.blocks} == {"fx"}
    _, never = discover(_inline_net(), (3, 32, 32), trace="never")
    assert never.blocks == []
    with pytest.raises(ValueError, match="trace"):
        discover(model, SIZE, trace="sometimes")


@pytest.mark.slow
def test_a_net_fx_cannot_trace_is_exported_instead():
    class ShapeBranch(InlineNet):
        def forward(self, x):
            if x.shape[-1] > 16:  # control flow on a shape: symbolic_trace fails, torch.export specialises
                x = self.stem(x)
            else:
                x = nn.functional.interpolate(self.stem(x), scale_factor=2.0)
            x = self.block2(self.down(self.block1(x)))
            return self.head(nn.functional.silu(x).mean((2, 3)))

    torch.manual_seed(0)
    model = _randomise_norms(ShapeBranch()).eval()
    with pytest.raises(Exception):  # noqa: B017 - whatever symbolic_trace raises on a Proxy in an `if`
        torch.fx.symbolic_trace(model)
    traced, discovery = discover(model, (3, 32, 32))
    assert [(b.name, b.path, b.channels) for b in discovery.blocks] == [
        ("SE_1_1", "block1.inline_se1", 16), ("SE_2_1", "block2.inline_se1", 32)]
    traced.eval()  # a plain GraphModule (an exported module would refuse eval())
    for n in (1, 3):  # the batch size is free, 1 included
        x = torch.randn(n, 3, 32, 32)
        with capture(traced, discovery.blocks) as rec:
            out = traced(x)
        assert torch.allclose(out, model(x).detach(), atol=1e-5)
        assert rec.gates["SE_2_1"].shape == (n, 32)
