"""Scoped gate capture and ablation (capture.py) on tiny SE nets: values, equivalences, no side effects."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from tiny_nets import clone_model
from torch import nn

from senet_viz.gates.blocks import select_blocks
from senet_viz.gates.capture import ablate, capture, hook_count


class ConstantGate(nn.Module):
    """What a frozen SE block computes: the input scaled by a fixed per-channel vector."""

    def __init__(self, vec: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("vec", vec.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.vec.view(1, -1, 1, 1)


def _swap(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with the submodule at ``path`` replaced by ``new``."""
    out = clone_model(model)
    parent_path, _, child = path.rpartition(".")
    parent = out.get_submodule(parent_path) if parent_path else out
    setattr(parent, child, new)
    return out


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _plain(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


# ------------------------------------------------------------------------------------------- capture


def test_capture_records_float16_gates_in_0_1_per_block(tiny_seresnet, tiny_input):
    model, blocks = tiny_seresnet.model, tiny_seresnet.blocks
    # reference: the gate modules' own outputs, watched by a plain hook of ours
    ref: dict[str, list[torch.Tensor]] = {b.name: [] for b in blocks}
    handles = [model.get_submodule(b.gate_path).register_forward_hook(
        lambda _m, _i, out, n=b.name: ref[n].append(out.detach().flatten(1).clone())) for b in blocks]
    try:
        with capture(model, blocks) as rec:
            model(tiny_input)
            model(tiny_input[:2])
    finally:
        for h in handles:
            h.remove()
    gates = rec.gates
    assert list(gates) == [b.name for b in blocks]
    for b in blocks:
        g = gates[b.name]
        assert isinstance(g, np.ndarray) and g.dtype == np.float16
        assert g.shape == (6, b.channels)
        assert 0.0 <= g.min() and g.max() <= 1.0
        expected = torch.cat(ref[b.name]).numpy()
        np.testing.assert_allclose(g.astype(np.float32), expected, atol=1e-3)
        assert g.std() > 0  # random weights: gates vary, so the test can tell blocks apart
    assert hook_count(model) == 0


def test_capture_of_a_structural_se_gives_n_by_c(tiny_custom, small_input):
    with capture(tiny_custom.model, tiny_custom.blocks) as rec:
        tiny_custom.model(small_input)
    assert {k: v.shape for k, v in rec.gates.items()} == {"SE_1_1": (4, 16), "SE_2_1": (4, 32), "SE_3_1": (4, 32)}


def test_capture_runs_without_grad_by_default_and_with_grad_on_request(tiny_seresnet, tiny_input):
    model, blocks = tiny_seresnet.model, tiny_seresnet.blocks
    with capture(model, blocks[:1]):
        out = model(tiny_input)
    assert not out.requires_grad
    with capture(model, blocks[:1], grad=True) as rec:
        out = model(tiny_input)
    assert out.requires_grad
    out.sum().backward()
    assert model.fc.weight.grad is not None
    assert rec.gates["SE_2_1"].shape == (4, 16)
    model.zero_grad(set_to_none=True)


def test_capture_streams_without_keeping(tiny_seresnet, tiny_input):
    model, blocks = tiny_seresnet.model, tiny_seresnet.blocks
    seen: list[tuple[str, tuple[int, ...]]] = []
    with capture(model, blocks, keep=False, on_gates=lambda n, a: seen.append((n, a.shape))) as rec:
        model(tiny_input)
    assert seen == [(b.name, (4, b.channels)) for b in blocks]
    assert all(v.shape == (0, b.channels) for b, v in zip(blocks, rec.gates.values(), strict=True))


# -------------------------------------------------------------------------------------------- ablation


def test_identity_ablation_equals_replacing_the_se_module_by_identity(tiny_seresnet, tiny_input):
    model, blocks = tiny_seresnet.model, tiny_seresnet.blocks
    chosen = select_blocks(blocks, "SE_3_2,stage:5")
    reference = clone_model(model)
    for b in chosen:
        reference = _swap(reference, b.path, nn.Identity())
    expected = _plain(reference, tiny_input)
    with ablate(model, chosen, mode="identity"):
        got = model(tiny_input)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(_plain(model, tiny_input), expected, atol=1e-3), "ablation must change the logits"


def test_identity_ablation_of_a_structural_se(tiny_custom, small_input):
    model, blocks = tiny_custom.model, tiny_custom.blocks
    expected = _plain(_swap(model, "gate2", nn.Identity()), small_input)
    with ablate(model, select_blocks(blocks, "gate2")):
        got = model(small_input)
    assert torch.allclose(got, expected, atol=1e-6)


def test_mean_ablation_equals_a_constant_gate(tiny_seresnet, tiny_input):
    model, blocks = tiny_seresnet.model, tiny_seresnet.blocks
    chosen = select_blocks(blocks, "SE_2_1,SE_5_2")
    rng = np.random.default_rng(0)
    means = {b.name: rng.uniform(0.05, 0.95, b.channels).astype(np.float32) for b in chosen}
    reference = model
    for b in chosen:
        reference = _swap(reference, b.path, ConstantGate(torch.from_numpy(means[b.name])))
    expected = _plain(reference, tiny_input)
    with ablate(model, chosen, mode="mean", means=means):
        got = model(tiny_input)
    assert torch.allclose(got, expected, atol=1e-5)
    with ablate(model, chosen, mode="identity"):
        identity = model(tiny_input)
    assert not torch.allclose(identity, expected, atol=1e-3)


def test_mean_ablation_of_a_structural_se_with_n_by_c_gates(tiny_custom, small_input):
    model, blocks = tiny_custom.model, tiny_custom.blocks
    vec = torch.linspace(0.1, 0.9, 32)
    expected = _plain(_swap(model, "gate3", ConstantGate(vec)), small_input)
    with ablate(model, select_blocks(blocks, "SE_3_1"), mode="mean", means={"SE_3_1": vec}):
        got = model(small_input)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("bad", [{}, {"SE_5_1": np.ones(63, np.float32)}, {"SE_5_1": np.ones(65, np.float32)}])
def test_mean_ablation_without_a_right_vector_raises_naming_the_block(tiny_seresnet, bad):
    model = tiny_seresnet.model
    chosen = select_blocks(tiny_seresnet.blocks, "SE_5_1")
    with pytest.raises(ValueError, match="SE_5_1"):
        with ablate(model, chosen, mode="mean", means=bad):
            pytest.fail("the with-block must not run")
    assert hook_count(model) == 0


def test_mean_ablation_with_no_means_at_all_raises(tiny_seresnet):
    with pytest.raises(ValueError, match="SE_2_1"):
        with ablate(tiny_seresnet.model, tiny_seresnet.blocks[:1], mode="mean"):
            pass


def test_unknown_mode_raises(tiny_seresnet):
    with pytest.raises(ValueError, match="identity"):
        with ablate(tiny_seresnet.model, tiny_seresnet.blocks, mode="zero"):
            pass
    assert hook_count(tiny_seresnet.model) == 0


def test_blocks_of_another_model_are_refused_without_leaking_hooks(tiny_seresnet, tiny_custom):
    model = tiny_seresnet.model
    mixed = [tiny_seresnet.blocks[0], *tiny_custom.blocks]
    for scope in (lambda: capture(model, mixed), lambda: ablate(model, mixed)):
        with pytest.raises(ValueError, match="gate1.sigmoid"):
            with scope():
                pass
        assert hook_count(model) == 0


# ------------------------------------------------------------------------------------------- nesting


def test_capture_inside_ablate_records_the_ablated_gates(tiny_seresnet, tiny_input):
    model, blocks = tiny_seresnet.model, tiny_seresnet.blocks
    chosen = select_blocks(blocks, "stage:5")
    with ablate(model, chosen, mode="identity"):
        with capture(model, blocks) as rec:
            model(tiny_input)
    for b in blocks:
        g = rec.gates[b.name]
        if b in chosen:
            assert np.all(g == 1.0), b.name
        else:
            assert g.min() < 0.99, b.name  # untouched blocks keep their real gates
    vec = np.full(64, 0.25, np.float32)
    with ablate(model, chosen[:1], mode="mean", means={"SE_5_1": vec}), capture(model, chosen) as rec:
        model(tiny_input)
    np.testing.assert_array_equal(rec.gates["SE_5_1"], np.full((4, 64), 0.25, np.float16))
    assert hook_count(model) == 0


def test_capture_around_ablate_also_records_the_gates_the_network_used(tiny_seresnet, tiny_input):
    model, blocks = tiny_seresnet.model, tiny_seresnet.blocks
    chosen = select_blocks(blocks, "last:1")
    with capture(model, chosen) as rec:
        with ablate(model, chosen, mode="identity"):
            model(tiny_input)
    assert np.all(rec.gates["SE_5_2"] == 1.0)


# --------------------------------------------------------------------------------------- no side effects


@pytest.mark.parametrize("scope", ["capture", "ablate", "mean"])
def test_no_hook_left_after_an_exception_in_the_with_block(tiny_seresnet, tiny_input, scope):
    model, blocks = tiny_seresnet.model, tiny_seresnet.blocks
    means = {b.name: np.full(b.channels, 0.5, np.float32) for b in blocks}

    def enter():
        if scope == "capture":
            return capture(model, blocks)
        return ablate(model, blocks, mode="identity" if scope == "ablate" else "mean", means=means)

    with pytest.raises(KeyError, match="boom"):
        with enter():
            model(tiny_input)
            assert hook_count(model) == len(blocks)
            raise KeyError("boom")
    assert hook_count(model) == 0
    with pytest.raises(RuntimeError):  # an error raised by the forward itself
        with enter():
            model(torch.zeros(1, 5, 64, 64))
    assert hook_count(model) == 0
    # the lock was released: another thread can take the scope at once
    done = threading.Event()

    def other():
        with capture(model, blocks[:1]):
            done.set()

    t = threading.Thread(target=other)
    t.start()
    t.join(timeout=10)
    assert done.is_set()


@pytest.mark.parametrize("training", [False, True])
def test_the_model_is_never_mutated(tiny_seresnet, tiny_input, training):
    model, blocks = tiny_seresnet.model, tiny_seresnet.blocks
    before = _state(model)
    requires_grad = [p.requires_grad for p in model.parameters()]
    baseline = _plain(model, tiny_input)
    means = {b.name: np.full(b.channels, 0.5, np.float32) for b in blocks}
    # the same ablations built into a copy: no SE module (identity) for the first three, a constant gate for the rest
    reference = clone_model(model)
    for b in blocks:
        new = nn.Identity() if b in blocks[:3] else ConstantGate(torch.from_numpy(means[b.name]))
        reference = _swap(reference, b.path, new)
    model.train(training)
    reference.train(training)
    with capture(model, blocks) as rec, ablate(model, blocks[:3]), ablate(model, blocks[3:], mode="mean", means=means):
        out = model(tiny_input)
    expected = _plain(reference, tiny_input)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)  # the forward ran in the mode asked for
    for b in blocks:  # the recorder saw the gates the network used
        np.testing.assert_array_equal(rec.gates[b.name], np.full((4, b.channels), 1.0 if b in blocks[:3] else 0.5,
                                                                 np.float16))
    assert all(m.training is training for m in model.modules())
    assert hook_count(model) == 0
    assert [p.requires_grad for p in model.parameters()] == requires_grad
    assert all(p.grad is None for p in model.parameters())
    after = _state(model)
    bn_stats = {k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert bn_stats  # the tiny net has batch norm
    # the weights never change; batch-norm statistics only in training mode, and then exactly as in the reference
    # copy, which ran the same batch through the same (ablated) network
    assert _same_state({k: before[k] for k in before if k not in bn_stats}, {k: after[k] for k in after
                                                                             if k not in bn_stats})
    if training:
        ref_state = reference.state_dict()
        changed = {k for k in bn_stats if not torch.equal(before[k], after[k])}
        assert changed == bn_stats
        for k in bn_stats:
            torch.testing.assert_close(after[k], ref_state[k], rtol=1e-5, atol=1e-6)
        assert all(after[k].item() == before[k].item() + 1 for k in bn_stats if k.endswith("num_batches_tracked"))
        model.load_state_dict(before)  # put the statistics back to compare the plain forward below
    else:
        assert _same_state(before, after)
    model.eval()
    assert _same_state(before, _state(model))
    assert torch.equal(_plain(model, tiny_input), baseline)


# -------------------------------------------------------------------------------------------- threads


def test_two_threads_ablating_different_blocks_get_their_own_logits(tiny_seresnet, tiny_input):
    model, blocks = tiny_seresnet.model, tiny_seresnet.blocks
    jobs = {"a": select_blocks(blocks, "SE_2_1,SE_3_1"), "b": select_blocks(blocks, "stage:5")}
    expected = {}
    for key, chosen in jobs.items():  # one after the other
        with ablate(model, chosen):
            expected[key] = model(tiny_input)
    assert not torch.allclose(expected["a"], expected["b"], atol=1e-3)

    iterations = 8
    barrier = threading.Barrier(2)
    got: dict[str, list[torch.Tensor]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def worker(key: str) -> None:
        try:
            for _ in range(iterations):
                barrier.wait(timeout=30)
                with ablate(model, jobs[key]):
                    got[key].append(model(tiny_input))
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(k,)) for k in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    for key in jobs:
        assert len(got[key]) == iterations
        for logits in got[key]:
            assert torch.allclose(logits, expected[key], atol=1e-6), key
    assert hook_count(model) == 0
