"""Gates that can be removed (issue 20, item 6): identity ablation of every accepted gate kind is the network
without the module (logits to 1e-6 against a hand-built copy with the module replaced by the identity, NFNet's gain
set to 1), and the parameters and MACs counted as saved are those the copy lacks. A GlobalContext that both scales
and adds (``fuse_add=True, fuse_scale=True``) cannot be removed by its gate (the additive branch would stay): it is
listed in ``rejected`` with the reason, found by module or through a traced graph."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from test_gate_kinds import SIZE, tiny_nfnet, tiny_resnet
from timm.layers import CecaModule, EcaModule, EffectiveSEModule, GatherExcite, GlobalContext, SEModule
from timm.layers.cbam import CbamModule
from torch import nn

from senet_viz.analysis.cost import count_macs, model_cost
from senet_viz.gates.blocks import discover, discover_se_blocks
from senet_viz.gates.capture import ablate
from senet_viz.gates.kinds import GC_FUSE_ADD


@pytest.fixture(autouse=True)
def constructible_gather_excite(monkeypatch):
    """As in test_gate_kinds: timm 1.0.31's GatherExcite passes stray positionals to ConvMlp."""
    import timm.layers.gather_excite as ge

    real = ge.ConvMlp
    monkeypatch.setattr(ge, "ConvMlp", lambda c, h, *_stray, **kw: real(c, h, **kw))


def _without(model: nn.Module, paths: list[str], gain: float | None = None) -> nn.Module:
    """A copy of ``model`` with the modules at ``paths`` replaced by the identity (and NFNet's gain by ``gain``)."""
    ref = copy.deepcopy(model)
    for path in paths:
        parent_path, _, child = path.rpartition(".")
        parent = ref.get_submodule(parent_path)
        setattr(parent, child, nn.Identity())
        if gain is not None:
            parent.attn_gain = gain
    return ref.eval()


def _x(n: int = 3) -> torch.Tensor:
    return torch.randn(n, *SIZE, generator=torch.Generator().manual_seed(0))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


ACCEPTED = [
    pytest.param(lambda: tiny_resnet(SEModule), None, id="se"),
    pytest.param(lambda: tiny_resnet(EffectiveSEModule), None, id="ese"),
    pytest.param(lambda: tiny_resnet(EcaModule), None, id="eca"),
    pytest.param(lambda: tiny_resnet(CecaModule), None, id="ceca"),
    pytest.param(lambda: tiny_resnet(GatherExcite), None, id="gather_excite"),
    pytest.param(lambda: tiny_resnet(GlobalContext), None, id="global_context_scale_only"),
    pytest.param(lambda: tiny_resnet(partial(CbamModule, rd_ratio=0.25)), None, id="cbam_channel"),
    pytest.param(lambda: tiny_nfnet("se"), 1.0, id="nfnet_se_gain"),
    pytest.param(lambda: tiny_nfnet("eca"), 1.0, id="nfnet_eca_gain"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("build", "gain"), ACCEPTED)
@pytest.mark.parametrize("trace", ["never", "always"])
def test_identity_ablation_is_the_network_without_the_module(build, gain, trace):
    model = build()
    run, found = discover(model, SIZE, trace=trace)
    blocks = found.blocks
    assert len(blocks) == 4, found.rejected
    removed = _without(model, [b.path for b in blocks], gain)
    x = _x()
    with torch.no_grad():
        with ablate(run, blocks, "identity"):
            got = run(x)
        want = removed(x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # what is counted as saved is what the copy without the modules lacks
    cost = model_cost(run, blocks, blocks, SIZE)
    assert cost.params_removed == _params(model) - _params(removed) > 0
    assert cost.macs_removed == count_macs(model, SIZE)[0] - count_macs(removed, SIZE)[0] > 0


def test_global_context_that_also_adds_is_rejected_with_the_reason():
    model = tiny_resnet(partial(GlobalContext, fuse_add=True, fuse_scale=True))
    modules = discover_se_blocks(model, SIZE)
    assert modules.blocks == [] and len(modules.rejected) == 4
    assert set(modules.rejected.values()) == {GC_FUSE_ADD}
    assert "additive branch" in GC_FUSE_ADD
    # through a traced graph (as an ONNX / TorchScript / .pt2 file is searched) the inline x * g is refused too
    for trace in ("auto", "always"):
        _, found = discover(model, SIZE, trace=trace)
        assert found.blocks == [], trace
        graph = [why for where, why in found.rejected.items() if ":" in where]
        assert len(graph) == 4 and all("mlp_add(context)" in why for why in graph), found.rejected


def test_global_context_that_only_adds_is_still_rejected():
    model = tiny_resnet(partial(GlobalContext, fuse_add=True, fuse_scale=False))
    found = discover_se_blocks(model, SIZE)
    assert found.blocks == [] and all("without fuse_scale" in why for why in found.rejected.values())


def test_the_gate_alone_would_not_remove_a_scaling_and_adding_module():
    """Why it is rejected: a gate of 1 on a fuse_add GlobalContext leaves x + mlp_add(context), not x."""
    model = tiny_resnet(partial(GlobalContext, fuse_add=True, fuse_scale=True))
    for m in model.modules():
        if isinstance(m, GlobalContext):
            nn.init.normal_(m.mlp_add.fc2.weight, std=0.5)  # timm zero-inits it: make the additive term visible
            m.gate = nn.Identity()
            m.mlp_scale = None  # gate = 1: x * 1
    x = _x()
    with torch.no_grad():
        gate_one = model(x)
        removed = _without(model, [p for p, m in model.named_modules() if isinstance(m, GlobalContext)])(x)
    assert not torch.allclose(gate_one, removed, atol=1e-3)
