import pytest
import torch

import oracle
from simmpnet.errors import InputError
from simmpnet.models import DMWLA


def make_block(warmup_iters=3, **kwargs):
    defaults = dict(feature_dim=16, num_k=3, pool_size=12, warmup_iters=warmup_iters, update_count=5)
    defaults.update(kwargs)
    return DMWLA(8, **defaults)


def non_local(block, x):
    t = block.theta(x).flatten(2)
    q = block.phi(x).flatten(2)
    v = block.g(x).flatten(2)
    weights = torch.softmax(block.scale * t.transpose(1, 2) @ q, dim=-1)
    read = (weights @ v.transpose(1, 2)).transpose(1, 2).reshape(x.shape[0], -1, *x.shape[2:])
    return x + block.o(read)


def test_warmup_block_is_plain_non_local_attention():
    block = make_block()
    x = torch.randn(2, 8, 5, 6)
    torch.testing.assert_close(block.eval()(x), non_local(block, x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(block.train()(x), non_local(block, x), atol=1e-5, rtol=1e-5)


def test_after_warmup_block_adds_the_memory_read():
    block = make_block(warmup_iters=0).eval()
    x = torch.randn(2, 8, 4, 5)
    t = block.theta(x).flatten(2).transpose(1, 2).reshape(-1, 16)
    memory = oracle.memory_read(t, block.memory.bank, block.memory.prototypes, 12).view(2, 20, 16)
    expected = non_local(block, x) + block.o(memory.transpose(1, 2).reshape(2, 16, 4, 5))
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_warmup_counts_training_forwards_only_and_ends_exactly():
    block = make_block(warmup_iters=3)
    x = torch.randn(2, 8, 6, 6)
    block.eval()
    for _ in range(5):
        block(x)
    assert block.in_warmup and int(block.memory.warmup_counter) == 0
    block.train()
    for step in range(3):
        assert block.in_warmup
        block(x)
        assert block.commit_memory()
    assert not block.in_warmup
    structured = block.memory.bank.clone()
    # the first forward after warm-up reads and updates the bank, it does not sample into it
    block(x)
    block.commit_memory()
    rewritten = (block.memory.bank != structured).any(0).sum()
    assert 0 < rewritten <= 3 * 5


def test_end_warmup_runs_kmeans_now():
    block = make_block(warmup_iters=1000)
    block.train()(torch.randn(2, 8, 6, 6))
    block.commit_memory()
    block.end_warmup()
    assert not block.in_warmup
    torch.testing.assert_close(block.memory.prototypes.norm(dim=0), torch.ones(3))


def test_eval_never_changes_the_block_and_is_repeatable():
    block = make_block(warmup_iters=0).eval()
    x = torch.randn(3, 8, 7, 7)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    first, second = block(x), block(x)
    assert torch.equal(first, second)
    with torch.no_grad():
        block(x)
    for key, value in block.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_training_updates_memory_and_momentum_keys():
    block = make_block(warmup_iters=0).train()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        block.phi.weight.add_(1.0)  # make phi and its momentum copy differ
    key_before = block.key_weight.clone()
    bank_before = block.memory.bank.clone()
    block(x)
    # the forward only records the change; the commit applies it, with the phi of the forward
    assert torch.equal(block.memory.bank, bank_before) and torch.equal(block.key_weight, key_before)
    expected_key = 0.95 * key_before + 0.05 * block.phi.weight.detach()
    with torch.no_grad():
        block.phi.weight.add_(1.0)  # an optimiser step between forward and commit
    assert block.commit_memory()
    assert not torch.equal(block.memory.bank, bank_before)
    torch.testing.assert_close(block.key_weight, expected_key)
    assert "key_weight" in block.state_dict()
    assert all(p is not block.key_weight for p in block.parameters())


def test_state_dict_round_trip_keeps_memory_and_counters():
    block = make_block(warmup_iters=2).train()
    for _ in range(4):
        block(torch.randn(2, 8, 5, 5))
        block.commit_memory()
    block.update_count = 7
    clone = make_block(warmup_iters=2)
    clone.load_state_dict(block.state_dict())
    for key, value in block.state_dict().items():
        assert torch.equal(clone.state_dict()[key], value), key
    assert not clone.in_warmup and clone.update_count == 7
    x = torch.randn(1, 8, 5, 5)
    assert torch.equal(clone.eval()(x), block.eval()(x))


def test_buffers_follow_to():
    block = make_block().to(torch.float64)
    assert block.memory.bank.dtype == torch.float64 and block.key_weight.dtype == torch.float64
    meta = make_block().to("meta")
    assert all(b.device.type == "meta" for b in meta.buffers())


def test_gradients_reach_every_parameter_after_warmup():
    block = make_block(warmup_iters=0).train()
    block(torch.randn(2, 8, 5, 5)).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_autocast_bf16_keeps_memory_in_fp32():
    block = make_block(warmup_iters=0).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(torch.randn(2, 8, 5, 5))
    assert block.commit_memory()
    assert out.shape == (2, 8, 5, 5)
    assert block.memory.bank.dtype == torch.float32 and torch.isfinite(block.memory.bank).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("warmup_iters", [5, 0], ids=["warm-up", "after warm-up"])
def test_autocast_reads_keep_logits_beyond_half_precision(warmup_iters, dtype):
    # The decoder's deepest block of a trained demo network has read logits t.q of about 1e5-1e6,
    # above fp16's largest value (65504) and far beyond what bf16's 8-bit mantissa resolves,
    # while t, q, v themselves fit in either.
    block = make_block(warmup_iters=warmup_iters).eval()
    x = 300 * torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        block.memory.bank.mul_(300)  # the bank holds momentum keys of the same scale as q
        t = block.theta(x).flatten(2).transpose(1, 2)
        assert (t @ block.phi(x).flatten(2)).abs().max() > 65504
        assert (t @ block.memory.bank).abs().max() > 65504
        reference = block(x)
        with torch.autocast("cpu", dtype=dtype):
            out = block(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), reference, rtol=0.02, atol=3.0)

    block.train()
    with torch.autocast("cpu", dtype=dtype):
        loss = block(x).float().square().mean()
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_block_cast_to_half_precision_runs_in_its_dtype(dtype):
    block = make_block(warmup_iters=0).eval()
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        reference = block(x)
        out = block.to(dtype)(x.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), reference, rtol=0.05, atol=0.05)


def test_bad_input_and_bad_update_count():
    block = make_block()
    with pytest.raises(InputError, match=r"\(B, 8, H, W\)"):
        block(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match="update_count"):
        block.update_count = 13


def test_uncommitted_forward_changes_nothing_and_is_never_applied_twice():
    block = make_block(warmup_iters=2).train()
    x = torch.randn(2, 8, 5, 5)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    block(x)
    assert block.has_pending_memory
    for key, value in block.state_dict().items():
        assert torch.equal(value, before[key]), key
    block.discard_memory()
    assert not block.has_pending_memory and not block.commit_memory()
    assert int(block.memory.warmup_counter) == 0
    block(x)
    assert block.commit_memory() and not block.commit_memory()  # a second commit is a no-op
    assert int(block.memory.warmup_counter) == 1
    with pytest.warns(RuntimeWarning, match="never committed"):
        block(x)
        block(x)  # replaces the first forward's change
    block.commit_memory()
    assert int(block.memory.warmup_counter) == 2 and not block.in_warmup
    block(x)
    block.discard_memory()
    after_warmup = {k: v.clone() for k, v in block.state_dict().items()}
    block.commit_memory()
    for key, value in block.state_dict().items():
        assert torch.equal(value, after_warmup[key]), key


def test_eval_forward_records_nothing():
    block = make_block(warmup_iters=0).eval()
    block(torch.randn(2, 8, 5, 5))
    assert not block.has_pending_memory and not block.commit_memory()


def test_deferred_commit_equals_the_immediate_update():
    """Committing after the backward gives the bank an immediate update would give."""
    torch.manual_seed(3)
    block = make_block(warmup_iters=0).train()
    x = torch.randn(2, 8, 6, 6)
    keys = torch.nn.functional.conv2d(x, block.key_weight).flatten(2).transpose(1, 2).reshape(-1, 16)
    reference = make_block(warmup_iters=0)
    reference.load_state_dict(block.state_dict())
    reference.memory.update(keys)
    block(x).square().sum().backward()
    block.commit_memory()
    assert torch.equal(block.memory.bank, reference.memory.bank)
    assert torch.equal(block.memory.prototypes, reference.memory.prototypes)


def test_non_finite_candidates_never_reach_the_bank(caplog):
    # warm-up: the phi columns of a NaN input are not written
    block = make_block(warmup_iters=2).train()
    x = torch.randn(2, 8, 5, 5)
    x[0, 0, 1, 1] = float("nan")
    before = {k: v.clone() for k, v in block.state_dict().items()}
    block(x)
    with caplog.at_level("WARNING", logger="simmpnet.models.dmwla"):
        assert not block.commit_memory()
    assert "non-finite candidate features" in caplog.text
    for key, value in block.state_dict().items():
        assert torch.equal(value, before[key]), key

    # after warm-up: momentum keys that overflow fp16 under autocast
    block = make_block(warmup_iters=0).train()
    x = torch.randn(2, 8, 5, 5)
    x[0, :, 2, 2] = 3e4
    with torch.no_grad():
        block.key_weight.abs_().add_(0.5)  # a key of the large position: above 8 * 0.5 * 3e4 > 65504
    before = {k: v.clone() for k, v in block.state_dict().items()}
    with torch.autocast("cpu", dtype=torch.float16):
        block(x)
    caplog.clear()
    # after warm-up the drop is decided on the device: counted, and logged when the count is read
    with caplog.at_level("WARNING", logger="simmpnet.models.dmwla"):
        assert block.commit_memory()
        assert caplog.text == ""
        assert block.take_dropped_changes() == 1
    assert "1 memory change(s) with non-finite candidate features were dropped" in caplog.text
    assert block.take_dropped_changes() == 0  # the count starts again
    for key, value in block.state_dict().items():
        assert torch.equal(value, before[key]), key
    # the same batch in fp32 is a normal update
    block(x)
    bank = block.memory.bank.clone()
    assert block.commit_memory() and torch.isfinite(block.memory.bank).all()
    assert not torch.equal(block.memory.bank, bank) and block.take_dropped_changes() == 0
    assert not torch.equal(block.memory.bank, before["memory.bank"])
