"""The host-sync budget: operations that make the host wait for a GPU, counted on the CPU.

A training step after the warm-up may read the loss once (W-LD, the NaN check and the log use
that one number); an evaluation forward reads nothing back.  The counter itself is checked on
operations that do and do not sync.
"""
import pytest
import torch

from conftest import small_train_config
from simmpnet.host_syncs import count_host_syncs
from simmpnet.models import SimMPNet
from simmpnet.training.trainer import TrainConfig, Trainer

#: At most this many host syncs in a training step after the warm-up, and none in an eval forward.
TRAIN_STEP_BUDGET = 2


def test_counter_sees_the_operations_that_sync_and_only_those():
    x = torch.tensor([0, 2, 2, 1])
    with count_host_syncs() as syncs:
        float(x.sum())
        bool(x.any())
        torch.bincount(x)
        x.nonzero()
        x[x > 0]
        torch.repeat_interleave(x)
    assert syncs.counts == {
        "aten::_local_scalar_dense": 2,
        "aten::bincount": 1,
        "aten::nonzero": 1,
        "aten::index": 1,
        "aten::repeat_interleave": 1,
    }
    with count_host_syncs() as syncs:
        y = (x * 2 + 1).float().softmax(0)
        x[torch.tensor([0, 3])]
        torch.repeat_interleave(x, output_size=5)
        x.repeat_interleave(2)
        torch.zeros(3, dtype=torch.long).scatter_add_(0, x.clamp(max=2), torch.ones_like(x))
        y.topk(2)
    assert syncs.total == 0, dict(syncs.counts)


@pytest.fixture(scope="module")
def trainer(brain_data, tmp_path_factory):
    # W-LD from the first epoch, so that K changes between the steps that are counted.
    config = small_train_config(brain_data, tmp_path_factory.mktemp("syncs"), warmup_iters=2, wld_start_epoch=0)
    trainer = Trainer(TrainConfig.from_dict(config))
    batch = next(iter(torch.utils.data.DataLoader(trainer.samples, batch_size=4)))
    trainer.batch = batch
    return trainer


def test_a_training_step_after_the_warm_up_reads_the_loss_only(trainer):
    batch = trainer.batch
    for _ in range(3):  # the two warm-up steps, the k-means start, one step with the memory
        assert trainer.train_step(batch["image"], batch["label"], epoch=1) is not None
    assert not trainer.model.in_warmup
    for _ in range(3):
        with count_host_syncs() as syncs:
            loss = trainer.train_step(batch["image"], batch["label"], epoch=1)
        assert loss is not None
        assert syncs.total <= TRAIN_STEP_BUDGET, dict(syncs.counts)
        assert syncs.counts == {"aten::_local_scalar_dense": 1}  # the loss
        # the step committed its memory update, with the K that W-LD set from the step losses
        assert all(not block.has_pending_memory for block in trainer.model.dmwla_blocks())
        assert {block.update_count for block in trainer.wld.blocks} == {trainer.wld.current_k}


def test_dropped_memory_changes_are_read_once_for_all_blocks(caplog):
    model = SimMPNet.from_variant("tiny", n_classes=3, img_size_a=64, img_size_b=56)
    blocks = model.dmwla_blocks()
    blocks[0].dropped_changes += 2
    blocks[-1].dropped_changes += 1
    with caplog.at_level("WARNING", logger="simmpnet.models.dmwla"):
        assert model.take_dropped_memory_changes() == 3
    assert caplog.text.count("non-finite candidate features were dropped") == 2
    assert model.take_dropped_memory_changes() == 0
    assert "dropped_changes" not in str(list(model.state_dict()))  # a count, not state


def test_an_eval_forward_reads_nothing_back(trainer):
    model = trainer.model
    assert not model.in_warmup
    model.eval()
    try:
        for size in (64, 96):  # also at a size the network was not built for
            with torch.no_grad(), count_host_syncs() as syncs:
                model(torch.randn(2, 1, size, size))
            assert syncs.total == 0, dict(syncs.counts)
    finally:
        model.train()


def test_an_untrained_model_in_warm_up_reads_nothing_back_in_eval():
    model = SimMPNet.from_variant("tiny", n_classes=3, img_size_a=64, img_size_b=56).eval()
    with torch.no_grad(), count_host_syncs() as syncs:
        model(torch.randn(1, 1, 64, 64))
    assert syncs.total == 0, dict(syncs.counts)


@pytest.mark.slow
@pytest.mark.parametrize("changes", [{"channels_last": True}, {"compile": "aot_eager"}])
def test_channels_last_and_compiled_training_take_the_eager_steps(brain_data, tmp_path, changes):
    # The same three steps (warm-up write and k-means start, two memory updates) eagerly and with
    # the option.  At lr 1e-6: Adam turns rounding-level gradient differences into +-lr steps
    # (tests/test_distributed.py explains), which a larger rate would amplify past the tolerance.
    def run(name, **extra):
        config = small_train_config(
            brain_data, tmp_path / name, warmup_iters=1, val_list=None, max_steps=3, lr=1e-6, **extra
        )
        trainer = Trainer(TrainConfig.from_dict(config))
        batch = next(iter(torch.utils.data.DataLoader(trainer.samples, batch_size=4)))
        losses = [trainer.train_step(batch["image"], batch["label"], epoch=0) for _ in range(3)]
        return losses, trainer.model.state_dict()

    eager_losses, eager_state = run("eager")
    losses, state = run("option", **changes)
    assert losses == pytest.approx(eager_losses, rel=1e-4)
    # The weights follow; the memory banks are not compared slot by slot: which of two tied
    # slots an update rewrites turns on the last bit of a score.
    for key, value in eager_state.items():
        if value.is_floating_point() and "memory." not in key and "key_weight" not in key:
            torch.testing.assert_close(state[key], value, rtol=1e-3, atol=1e-4, msg=lambda m, key=key: f"{key}: {m}")
    assert any("memory.bank" in key for key in state)


def test_unknown_compile_mode_is_refused_naming_the_key(brain_data, tmp_path):
    from simmpnet.errors import InputError

    with pytest.raises(InputError, match="compile must be one of"):
        Trainer(TrainConfig.from_dict(small_train_config(brain_data, tmp_path, compile="fast")))
