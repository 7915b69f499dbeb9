import pytest
import torch
import torch.nn.functional as F

import oracle
from simmpnet.models import PrototypeMemory, kmeans


def structured_memory(feature_dim=16, num_k=4, pool_size=20, update_count=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    memory = PrototypeMemory(feature_dim, num_k, pool_size=pool_size, warmup_iters=0, update_count=update_count)
    memory.bank.copy_(torch.randn(feature_dim, num_k * pool_size, generator=gen))
    memory.prototypes.copy_(memory.bank.view(feature_dim, num_k, pool_size).mean(2))
    return memory


@pytest.mark.parametrize("rows", [1, 7, 333])
def test_read_equals_oracle(rows):
    memory = structured_memory()
    queries = torch.randn(rows, 16) * 3
    expected = oracle.memory_read(queries, memory.bank, memory.prototypes, memory.pool_size)
    torch.testing.assert_close(memory.read(queries), expected, atol=1e-5, rtol=1e-5)


def test_read_is_differentiable_and_unskewed_by_category_imbalance():
    memory = structured_memory(num_k=3)
    # Every query falls in one category: the chunking must still give the oracle's answer.
    queries = (memory.prototypes[:, 1] * 5).repeat(50, 1) + 0.01 * torch.randn(50, 16)
    queries.requires_grad_(True)
    out = memory.read(queries)
    torch.testing.assert_close(
        out, oracle.memory_read(queries.detach(), memory.bank, memory.prototypes, memory.pool_size), atol=1e-5, rtol=1e-5
    )
    out.sum().backward()
    assert queries.grad is not None and queries.grad.abs().sum() > 0


@pytest.mark.parametrize("rows, update_count", [(2000, 10), (12, 10), (3, 7)])
def test_update_equals_oracle(rows, update_count):
    memory = structured_memory(update_count=update_count)
    keys = torch.randn(rows, 16) * 2
    categories = (keys @ memory.prototypes).argmax(1)
    counts = torch.bincount(categories, minlength=4)
    if rows == 2000:
        assert (counts >= update_count).all(), "the test wants every category populated"
    else:
        assert (counts < update_count).any()  # exercises the replication and the empty case
    bank, protos, chosen = oracle.memory_update(
        memory.bank, memory.prototypes, keys, memory.pool_size, update_count, memory.memory_momentum
    )
    before = memory.bank.clone()
    memory.update(keys)
    changed = (memory.bank != before).any(0).nonzero().squeeze(1).tolist()
    expected_changed = sorted(col for slots, _ in chosen.values() for col in slots)
    assert changed == expected_changed  # the same slots were rewritten
    torch.testing.assert_close(memory.bank, bank, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(memory.prototypes, protos, atol=1e-5, rtol=1e-5)
    for c in range(4):
        block = slice(c * 20, (c + 1) * 20)
        if counts[c] == 0:
            assert torch.equal(memory.bank[:, block], before[:, block])


def test_update_count_is_capped_by_pool_size():
    memory = structured_memory(pool_size=5, update_count=50)
    memory.update(torch.randn(400, 16))
    # every slot of a populated category was rewritten
    assert (memory.bank != structured_memory(pool_size=5).bank).any(0).sum() > 0


def test_warmup_lasts_exactly_warmup_iters_writes_and_then_clusters():
    memory = PrototypeMemory(8, 3, pool_size=10, warmup_iters=5)
    for step in range(5):
        assert memory.in_warmup
        before = memory.bank.clone()
        memory.warmup_write(torch.randn(2, 8, 40))
        if step < 4:
            changed = (memory.bank != before).any(0).sum()
            assert 1 <= changed <= 30
    assert not memory.in_warmup
    assert int(memory.warmup_counter) == 5
    with pytest.raises(RuntimeError):
        memory.warmup_write(torch.randn(2, 8, 40))


def test_kmeans_start_gives_blocks_of_their_own_cluster_and_unit_prototypes():
    num_k, pool, d = 4, 25, 6
    gen = torch.Generator().manual_seed(3)
    centres = torch.randn(num_k, d, generator=gen) * 20
    sizes = [40, 30, 18, 12]  # two clusters smaller than the block: members must repeat
    points = torch.cat([centres[i] + torch.randn(n, d, generator=gen) for i, n in enumerate(sizes)])
    truth = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    perm = torch.randperm(points.shape[0], generator=gen)
    points, truth = points[perm], truth[perm]
    memory = PrototypeMemory(d, num_k, pool_size=pool, warmup_iters=10)
    memory.bank.copy_(points.t())
    memory.initialise_from_kmeans()
    assert not memory.in_warmup
    torch.testing.assert_close(memory.prototypes.norm(dim=0), torch.ones(num_k))
    used = set()
    for c in range(num_k):
        block = memory.bank[:, c * pool : (c + 1) * pool].t()
        # each column is one of the original points
        match = torch.cdist(block, points).argmin(1)
        assert torch.allclose(points[match], block)
        owners = truth[match].unique()
        assert owners.numel() == 1, f"block {c} mixes clusters {owners.tolist()}"
        owner = int(owners)
        assert owner not in used
        used.add(owner)
        expected_distinct = min(sizes[owner], pool)
        assert match.unique().numel() == expected_distinct
        cosine = F.cosine_similarity(memory.prototypes[:, c], centres[owner], dim=0)
        assert cosine > 0.99


def test_kmeans_recovers_separated_blobs_and_is_repeatable():
    gen = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0]])
    points = torch.cat([c + 0.5 * torch.randn(30, 2, generator=gen) for c in centres])
    cents, labels = kmeans(points, 3, seed=5)
    for i in range(3):
        assert labels[i * 30 : (i + 1) * 30].unique().numel() == 1
    assert labels.unique().numel() == 3
    cents2, labels2 = kmeans(points, 3, seed=5)
    assert torch.equal(labels, labels2) and torch.equal(cents, cents2)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        kmeans(points[:2], 3)


def test_update_and_kmeans_run_in_fp32_under_autocast():
    memory = structured_memory()
    reference = structured_memory()
    keys = torch.randn(2000, 16) * 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        memory.update(keys)
    reference.update(keys)
    assert torch.equal(memory.bank, reference.bank) and memory.bank.dtype == torch.float32
    fresh, control = PrototypeMemory(8, 3, pool_size=10, warmup_iters=1), PrototypeMemory(8, 3, pool_size=10, warmup_iters=1)
    control.bank.copy_(fresh.bank)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fresh.initialise_from_kmeans()
    control.initialise_from_kmeans()
    assert torch.equal(fresh.bank, control.bank) and torch.equal(fresh.prototypes, control.prototypes)


def test_the_phase_travels_with_the_state_dict_whatever_warmup_iters_the_loader_has():
    """``in_warmup`` is the saved ``warmup_done`` buffer: a block that loads a state dict takes
    its phase, whatever its own ``warmup_iters``, and changing ``warmup_iters`` never sends a
    clustered bank back into warm-up."""
    done = PrototypeMemory(8, 3, pool_size=4, warmup_iters=2)
    done.initialise_from_kmeans()
    assert int(done.warmup_done) == 1 and "warmup_done" in done.state_dict()
    fresh = PrototypeMemory(8, 3, pool_size=4, warmup_iters=2000)
    assert fresh.in_warmup and not done.in_warmup
    fresh.load_state_dict(done.state_dict())
    assert not fresh.in_warmup
    fresh.warmup_iters = 10_000  # counter 2: only a block still in warm-up would care
    assert not fresh.in_warmup
    fresh.load_state_dict(PrototypeMemory(8, 3, pool_size=4, warmup_iters=2).state_dict())
    assert fresh.in_warmup and int(fresh.warmup_counter) == 0


def test_a_block_in_warmup_leaves_it_at_the_length_it_has_then():
    memory = PrototypeMemory(8, 3, pool_size=4, warmup_iters=10)
    features = torch.randn(2, 8, 16)
    memory.warmup_write(features)
    memory.warmup_write(features)
    memory.warmup_iters = 3  # shortened mid-way: the next write is the last one
    assert memory.in_warmup
    memory.warmup_write(features)
    assert not memory.in_warmup and int(memory.warmup_counter) == 3


def test_a_state_dict_from_before_the_phase_was_saved_loads_by_its_counter():
    """The documented rule for old files: no ``warmup_done`` key -> the warm-up has ended when
    the saved counter has reached the loading block's ``warmup_iters``; strict loading accepts
    the missing key."""
    done = PrototypeMemory(8, 3, pool_size=4, warmup_iters=5)
    done.initialise_from_kmeans()
    old = {k: v for k, v in done.state_dict().items() if k != "warmup_done"}
    same_length = PrototypeMemory(8, 3, pool_size=4, warmup_iters=5)
    same_length.load_state_dict(old, strict=True)
    assert not same_length.in_warmup and int(same_length.warmup_done) == 1
    longer = PrototypeMemory(8, 3, pool_size=4, warmup_iters=6)
    longer.load_state_dict(old, strict=True)
    assert longer.in_warmup and int(longer.warmup_done) == 0


def test_no_warmup_reads_the_bank_from_the_start():
    assert not PrototypeMemory(8, 3, pool_size=4, warmup_iters=0).in_warmup


def test_a_short_category_pairs_replicas_in_blocks_as_the_authors_do():
    """Two positions for K = 5: the better one is copied 3 times, the other twice, and the copies
    fill the weakest slots in order (best position's copies first), not alternately."""
    memory = structured_memory(feature_dim=4, num_k=1, pool_size=10, update_count=5)
    keys = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 1.0, 2.0, 1.0]])  # position 1 scores higher
    slot_score = torch.softmax(memory.bank, dim=1).sum(0)
    weakest = slot_score.argsort()[:5]
    before = memory.bank.clone()
    memory.update(keys)
    m = memory.memory_momentum
    expected = before.clone()
    for slot, position in zip(weakest.tolist(), [1, 1, 1, 0, 0]):
        expected[:, slot] = (1 - m) * before[:, slot] + m * keys[position]
    torch.testing.assert_close(memory.bank, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(memory.prototypes, expected.mean(1, keepdim=True), atol=1e-6, rtol=1e-6)
