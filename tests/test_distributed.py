"""Distributed data-parallel training on the CPU: two real processes (gloo) against one.
With ``SIMMPNET_TEST_DEVICE=cuda`` (and two GPUs) the same checks run over NCCL, one GPU a rank
(``benchmarks/gpu_session.sh`` does).

How close two runs can stay: the gradients of a step agree to float rounding (~1e-5
relative), but training amplifies rounding.  Adam turns the noise-level gradients of the
parameters the loss does not depend on (biases before BatchNorm, per-head biases before a
softmax) into steps of +-lr in random directions, and the argmax/top-K decisions of DMW-LA
(category of each position, slots rewritten) flip on near-ties.  The trajectories of two
single-process runs from states that differ only by rounding part by ~1e-3 after a few steps
at lr 1e-3.  So the gradients are compared at the first step, and the trajectory at a learning
rate (1e-6) where rounding stays below the tolerance.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from conftest import cli_env, small_train_config

from simmpnet.errors import InputError
from simmpnet.training import TrainConfig, Trainer
from simmpnet.training.distributed import shard_batches

STEPS_DDP, STEPS_ALL = 6, 8
#: Where the ranks train: "cpu" (gloo) or "cuda" (NCCL, one GPU a rank).
DEVICE = os.environ.get("SIMMPNET_TEST_DEVICE", "cpu")
if DEVICE == "cuda":
    pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL checks need two CUDA GPUs")
    torch.backends.cudnn.allow_tf32 = False  # the tolerances below are fp32 ones


def _config(brain_data, output_dir, **changes):
    values = small_train_config(
        brain_data,
        output_dir,
        model_overrides={"img_size_a": 64, "img_size_b": 56, "depths": [1, 1, 1, 1]},
        warmup_iters=3,  # k-means after step 3, memory updates in steps 4..
        lr=1e-6,
        epochs=10,
        val_list=None,
        log_every=1,
        check_data=False,
        max_steps=STEPS_DDP,
        device=DEVICE,
    )
    values.update(changes)
    return values


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, values: dict, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world), OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    torch.backends.cudnn.allow_tf32 = False
    trainer = Trainer(TrainConfig.from_dict(values))
    try:
        first = _capture_first_gradients(trainer)
        result = trainer.fit()
        state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        torch.save({"state": state, "result": result, "grads": first}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        trainer.close()


def _capture_first_gradients(trainer) -> dict:
    """The gradients the optimiser sees at the first step (after DDP's averaging)."""
    grads: dict = {}
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        if not grads:
            grads.update({n: p.grad.to("cpu", copy=True) for n, p in trainer.model.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    return grads


def _step_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["event"] == "step"}


def _memory_keys(state):
    return [k for k in state if k.endswith(("memory.bank", "memory.prototypes", "memory.warmup_counter",
                                            "memory.update_count", "key_weight"))]


@pytest.mark.slow
def test_two_processes_match_one_and_resume_with_one(brain_data, tmp_path):
    torch.set_num_threads(1)
    # one process, global batch 4, 8 steps
    single = Trainer(TrainConfig.from_dict(_config(brain_data, tmp_path / "single", max_steps=STEPS_ALL)))
    reference_grads = _capture_first_gradients(single)
    single.fit()
    reference = _step_losses(tmp_path / "single")
    assert sorted(reference) == list(range(1, STEPS_ALL + 1))

    # two processes, 2 slices each, 6 steps
    ddp_dir = tmp_path / "ddp"
    values = _config(brain_data, ddp_dir)
    mp.spawn(_worker, args=(2, _free_port(), values, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True, map_location="cpu") for r in range(2)]
    assert ranks[0]["result"]["steps"] == ranks[1]["result"]["steps"] == STEPS_DDP
    state0, state1 = ranks[0]["state"], ranks[1]["state"]
    memory = _memory_keys(state0)
    assert len(memory) == 5 * 8  # 8 DMW-LA blocks (4 in encoder B, 4 in the decoder)
    for key in state0:  # memory banks, prototypes, counters, key weights, weights, BN statistics
        assert torch.equal(state0[key], state1[key]), key
    for key in memory:
        if key.endswith("warmup_counter"):
            assert int(state0[key]) == 3  # past the k-means start ...
        if key.endswith("memory.prototypes"):  # ... and updated since (block means, not unit centroids)
            assert not torch.allclose(state0[key].norm(dim=0), torch.ones(state0[key].shape[1]))

    # the gradient of the global batch: local CE + all-reduced Dice statistics + SyncBatchNorm
    grads = ranks[0]["grads"]
    assert grads.keys() == reference_grads.keys() and len(grads) == len(list(single.model.parameters()))
    difference = sum((grads[k] - reference_grads[k]).square().sum() for k in grads).sqrt()
    assert difference <= 1e-4 * sum(g.square().sum() for g in reference_grads.values()).sqrt()
    for key, value in reference_grads.items():  # parameters the loss depends on
        if value.norm() > 1e-3:
            assert (grads[key] - value).norm() <= 1e-3 * value.norm(), key

    # with SyncBatchNorm the loss trajectory is the single-process one.  The loss is the sum
    # over the 15 head subsets: 1e-4 on the mean subset loss.
    losses = _step_losses(ddp_dir)
    assert sorted(losses) == list(range(1, STEPS_DDP + 1))
    for step, value in losses.items():
        assert value / 15 == pytest.approx(reference[step] / 15, abs=1e-4), step
    # rank 0 alone wrote the checkpoint and the log
    assert sorted(p.name for p in ddp_dir.iterdir()) == ["curves.png", "last.pt", "log.jsonl", "resolved_config.yaml"]

    # the two-process checkpoint goes on in one process
    resumed = Trainer(TrainConfig.from_dict(_config(brain_data, ddp_dir, max_steps=STEPS_ALL)))
    resumed.resume()
    assert resumed.state["global_step"] == STEPS_DDP
    for key in memory:
        assert torch.equal(resumed.model.state_dict()[key].cpu(), state0[key]), key
    assert resumed.fit()["steps"] == STEPS_ALL
    losses = _step_losses(ddp_dir)
    assert sorted(losses) == list(range(1, STEPS_ALL + 1))
    for step in range(STEPS_DDP + 1, STEPS_ALL + 1):
        assert losses[step] / 15 == pytest.approx(reference[step] / 15, abs=1e-4), step


def test_global_batch_is_shared_contiguously_and_must_divide(brain_data, tmp_path, monkeypatch):
    batches = [[5, 1, 7, 3], [0, 2, 6, 4]]
    shards = [shard_batches(batches, r, 2) for r in range(2)]
    assert shards == [[[5, 1], [0, 2]], [[7, 3], [6, 4]]]
    assert [a + b for a, b in zip(*shards)] == batches
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match="batch_size 5 is the global batch.*divisible by the 2 processes"):
        Trainer(TrainConfig.from_dict(_config(brain_data, tmp_path / "x", batch_size=5)))


def _cli_config(brain_data, tmp_path) -> Path:
    """A YAML config for the real command line: 2 processes x 2 slices, 3 steps."""
    values = _config(brain_data, tmp_path / "unused", lr=1e-3, max_steps=3, warmup_iters=1)
    del values["output_dir"], values["max_steps"]
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _train_command(config: Path, output: Path) -> list[str]:
    return ["-m", "simmpnet", "--quiet", "train", "--config", str(config), "--output", str(output), "--max-steps", "3"]


def _child_env() -> dict[str, str]:
    env = cli_env(OMP_NUM_THREADS="1")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


@pytest.mark.slow
def test_cli_nproc_and_two_torchrun_nodes_train_the_same_model(brain_data, tmp_path):
    """`simmpnet train --nproc 2` (one node) and two `torchrun --nnodes 2` launches of one
    process each (two "nodes" on the loopback interface) give the same weights and banks; on
    the second, the node of rank 1 writes nothing into its own output folder."""
    config = _cli_config(brain_data, tmp_path)
    single_node = tmp_path / "one_node"
    done = subprocess.run(
        [sys.executable, *_train_command(config, single_node), "--nproc", "2"],
        env=_child_env(), capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    port = _free_port()
    outputs = [tmp_path / "node0", tmp_path / "node1"]
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={rank}", "--nproc-per-node=1",
             "--master-addr=127.0.0.1", f"--master-port={port}", *_train_command(config, outputs[rank])],
            env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace",
        )
        for rank in range(2)
    ]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)

    assert not outputs[1].exists()  # only rank 0 writes: checkpoints, log, pictures
    assert sorted(p.name for p in outputs[0].iterdir()) == sorted(p.name for p in single_node.iterdir())
    reference = torch.load(single_node / "last.pt", weights_only=True)
    multi_node = torch.load(outputs[0] / "last.pt", weights_only=True)
    assert reference["state"]["global_step"] == multi_node["state"]["global_step"] == 3
    weights, other = reference["model"]["state_dict"], multi_node["model"]["state_dict"]
    assert weights.keys() == other.keys() and len(_memory_keys(weights)) == 40
    for key in weights:  # weights, BatchNorm statistics, memory banks and counters
        assert torch.equal(weights[key], other[key]), key
    assert _step_losses(single_node) == _step_losses(outputs[0])


def _late_worker(rank: int, world: int, port: int, values: dict, out_dir: str) -> None:
    """Rank 1 reaches fit() two seconds after rank 0, which has written its first file by then
    unless it waits for every rank to have checked the output folder."""
    import time

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world), OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    trainer = Trainer(TrainConfig.from_dict(values))
    try:
        if rank == 1:
            time.sleep(2)
        trainer.fit()
    finally:
        trainer.close()


@pytest.mark.slow
def test_a_late_rank_does_not_take_rank_0s_new_files_for_another_run(brain_data, tmp_path):
    values = _config(brain_data, tmp_path / "run", max_steps=2)
    mp.spawn(_late_worker, args=(2, _free_port(), values, str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "run" / "resolved_config.yaml").is_file()
