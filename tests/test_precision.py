"""Precision: fp32 stays what it was, bf16 inference and the bf16 islands agree with fp32, ``auto``
follows the device's bf16 units, the command line takes ``--precision`` and records it, and
float64 forwards ignore the island setting."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from simmpnet.cli import main
from simmpnet.errors import InputError
from simmpnet.evaluation.inference import predict_slices
from simmpnet.models import SimMPNet
from simmpnet.models.dmwla import DMWLA
from simmpnet.models.memory import PrototypeMemory
from simmpnet import precision
from simmpnet.precision import inference_precision, resolve_precision, set_island_precision

SIDE = 64
# bf16 keeps 8 bits of mantissa: one rounding moves a value by at most 2^-9 of it.  A read
# computed in bf16 from logits and a softmax in fp32 is rounded twice (the weights, then the
# weighted sum), so its relative error stays within a few 2^-9; 2^-7 leaves a margin of two.
READ_TOLERANCE = 2.0**-7


def _phantom(count: int, seed: int) -> torch.Tensor:
    """``(count, 1, SIDE, SIDE)`` images of overlapping discs: deterministic, with edges."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIDE), torch.linspace(-1, 1, SIDE), indexing="ij")
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(count, 1, SIDE, SIDE)
    for image in images:
        for _ in range(5):
            cx, cy, radius, value = torch.rand(4, generator=generator).tolist()
            image[0] += value * ((xx - 1.6 * cx + 0.8) ** 2 + (yy - 1.6 * cy + 0.8) ** 2 < (0.1 + 0.5 * radius) ** 2)
    return images


@pytest.fixture(scope="module")
def model() -> SimMPNet:
    """``tiny`` at 64 px, 9 classes, its memories past the k-means start (two warm-up writes),
    in eval() mode."""
    torch.manual_seed(0)
    network = SimMPNet.from_variant("tiny", n_classes=9, img_size_a=SIDE, img_size_b=SIDE * 7 // 8)
    network.train()
    for seed in (1, 2):
        network(_phantom(2, seed))
        network.commit_memory()
    network.end_warmup()
    return network.eval()


def _islands(network: torch.nn.Module) -> set[str]:
    return {m.island_precision for m in network.modules() if hasattr(m, "island_precision")}


def test_fp32_is_the_default_and_ignores_the_island_setting(model):
    """fp32 inference is the forward as it always was: the default is fp32, bit for bit, and the
    island setting (bf16 inputs only) changes nothing in an fp32 forward."""
    x = _phantom(2, 3)
    volume = _phantom(3, 4)[:, 0].numpy() * 500.0
    assert _islands(model) == {"bf16"}
    with torch.no_grad():
        plain = model(x)
        set_island_precision(model, "fp32")
        try:
            with_fp32_islands = model(x)
        finally:
            set_island_precision(model, "bf16")
    assert torch.equal(plain, with_fp32_islands)
    default = model.predict(volume, probabilities=True)
    explicit = model.predict(volume, probabilities=True, precision="fp32")
    assert np.array_equal(default[0], explicit[0]) and np.array_equal(default[1], explicit[1])
    slices = _phantom(2, 5)[:, 0].numpy()
    direct = plain.argmax(1).to(torch.uint8).numpy()
    assert np.array_equal(predict_slices(model, x[:, 0].numpy(), SIDE), direct)
    assert np.array_equal(predict_slices(model, slices, SIDE), predict_slices(model, slices, SIDE, precision="fp32"))


def test_bf16_inference_is_autocast_with_the_default_islands_and_restores_the_setting(model):
    x = _phantom(2, 6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(x).float().argmax(1).to(torch.uint8).numpy()
    assert np.array_equal(predict_slices(model, x[:, 0].numpy(), SIDE, precision="bf16"), expected)
    assert _islands(model) == {"bf16"}
    with pytest.raises(RuntimeError), inference_precision(model, "cpu", "bf16", islands="fp32"):
        assert _islands(model) == {"fp32"} and torch.is_autocast_enabled("cpu")
        raise RuntimeError("a failing forward")
    assert _islands(model) == {"bf16"} and not torch.is_autocast_enabled("cpu")


def test_bf16_islands_labels_agree_with_fp32_as_autocast_does(model):
    """Under bf16 autocast every convolution already rounds to bf16, so labels near a tie
    between two classes differ from fp32 (about 1 % of the pixels of this untrained network).
    The bf16 islands add roundings of the same size (the reads' weights and sums), so they may
    at most about double that share: no more than twice the disagreement of the fp32 islands,
    plus 0.5 % for a baseline near zero.  Broken islands (logits rounded to 8 bits, a wrong
    category) move labels everywhere, far beyond that; 95 % agreement is the floor."""
    x = _phantom(4, 7)
    with torch.no_grad():
        reference = model(x).argmax(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_logits = model(x).float()
            set_island_precision(model, "fp32")
            try:
                fp32_logits = model(x).float()
            finally:
                set_island_precision(model, "bf16")
    assert not torch.equal(bf16_logits, fp32_logits)  # the setting acts on bf16 forwards
    fp32_islands, bf16_islands = fp32_logits.argmax(1), bf16_logits.argmax(1)
    baseline = float((fp32_islands != reference).float().mean())
    disagreement = float((bf16_islands != reference).float().mean())
    assert len(reference.unique()) > 1
    assert disagreement <= 2 * baseline + 0.005, (disagreement, baseline)
    assert disagreement <= 0.05


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_global_read_keeps_fp32_logits_at_trained_magnitudes():
    """Read logits of 1e4 and more, as in trained networks: the bf16 island's read stays within
    `READ_TOLERANCE` of the fp32 island's, where logits rounded to bf16 would move it by far more."""
    torch.manual_seed(0)
    block = DMWLA(32, feature_dim=32, num_k=4, pool_size=16, warmup_iters=0).eval()
    x = 40 * torch.randn(2, 32, 14, 14, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t, q, v = (p.bfloat16() for p in block._project(x))
        assert float((t.float() @ q.float()).abs().max()) > 1e4
        fp32 = block._read(t.float(), q.float(), v.float())
        bf16 = block._read(t, q, v)
        control = block.memory.read(t.flatten(0, 1).float()).view_as(fp32) + torch.softmax(
            (t @ q).float(), -1
        ) @ v.float()
    assert bf16.dtype == torch.bfloat16
    assert _relative(bf16, fp32) < READ_TOLERANCE
    assert _relative(control, fp32) > 4 * _relative(bf16, fp32)


def test_memory_read_of_bf16_queries_is_the_fp32_read_rounded_once():
    """The slots of a category are alike (one k-means cluster), so their logits lie close
    together at 1e4-1e5: the bank rounded to bf16 would reorder them.  bf16 queries (the bf16
    island's) are therefore read in fp32, and only the result is rounded."""
    d, num_k, pool = 64, 3, 50
    generator = torch.Generator().manual_seed(0)
    memory = PrototypeMemory(d, num_k, pool_size=pool, warmup_iters=0)
    centres = torch.randn(d, num_k, generator=generator)
    alike = centres.repeat_interleave(pool, 1) + 0.05 * torch.randn(d, num_k * pool, generator=generator)
    memory.bank.copy_(30 * alike)
    memory.prototypes.copy_(centres)
    members = torch.randint(num_k, (500,), generator=generator)
    queries = (30 * (centres[:, members].t() + 0.5 * torch.randn(500, d, generator=generator))).bfloat16()
    with torch.no_grad():
        assert float((queries.float() @ memory.bank).abs().max()) > 1e4
        fp32 = memory.read(queries.float())
        bf16 = memory.read(queries)
        slots = memory.bank.bfloat16().float().view(d, num_k, pool).permute(1, 2, 0)[memory.assign(queries)]
        rounded_bank = (torch.softmax(queries.float()[:, None] @ slots.transpose(1, 2), -1) @ slots)[:, 0]
    assert bf16.dtype == torch.bfloat16
    assert torch.equal(bf16, fp32.bfloat16())
    assert _relative(rounded_bank, fp32) > 4 * _relative(bf16, fp32)


def test_float64_forwards_ignore_the_island_setting(model):
    double = SimMPNet.from_variant("tiny", n_classes=9, img_size_a=SIDE, img_size_b=SIDE * 7 // 8)
    double.load_state_dict(model.state_dict())
    double = double.double().eval()
    x = _phantom(2, 8).double()
    with torch.no_grad():
        plain = double(x)
        set_island_precision(double, "fp32")
        islands = double(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = double(x)
    assert plain.dtype == torch.float64
    assert torch.equal(plain, islands) and torch.equal(plain, autocast)


def test_auto_follows_the_bf16_units_of_the_device(monkeypatch):
    for cpu, cuda in ((True, False), (False, True), (False, False)):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda cpu=cpu: cpu)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda cuda=cuda: cuda)
        assert resolve_precision("auto", "cpu") == ("bf16" if cpu else "fp32")
        assert resolve_precision("auto", torch.device("cuda", 0)) == ("bf16" if cuda else "fp32")
        assert resolve_precision("auto", "mps") == "fp32"
        for fixed in ("fp32", "bf16"):
            assert resolve_precision(fixed, "cpu") == fixed
    with pytest.raises(InputError, match="precision must be one of fp32, bf16, auto, got 'fp16'"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(InputError, match="island precision must be one of fp32, bf16"):
        set_island_precision(torch.nn.Identity(), "auto")


@pytest.mark.parametrize("amx", [True, False], ids=["amx", "no-amx"])
def test_attention_runs_the_math_kernel_where_the_fused_one_races(model, monkeypatch, amx):
    """On a CPU with AMX tiles torch's fused bf16 attention kernel races between threads and can
    end the process (pytorch/pytorch#187912): there every attention of a bf16 forward, MaxViT's
    and the DMW-LA reads, runs on the math kernel, and so does its backward.  fp32 forwards, and
    CPUs without tiles, keep the fused kernel; the setting is restored after the forward."""
    monkeypatch.setattr(precision, "_cpu_has_amx_tiles", lambda: amx)
    fused_allowed: list[bool] = []
    attention = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        fused_allowed.append(torch.backends.cuda.flash_sdp_enabled())
        return attention(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    x = _phantom(2, 7)
    with torch.inference_mode():
        model(x)
    assert set(fused_allowed) == {True}, "an fp32 forward keeps the fused kernel"
    fused_allowed.clear()
    with torch.inference_mode(), inference_precision(model, "cpu", "bf16"):
        logits = model(x)
    assert set(fused_allowed) == {not amx}
    assert torch.isfinite(logits.float()).all()
    assert torch.backends.cuda.flash_sdp_enabled()

    network = copy.deepcopy(model).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        heads = network(x)
    sum(h.float().square().mean() for h in heads).backward()
    grads = [p.grad for p in network.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_predict_and_evaluate_take_and_record_the_precision(model, brain_data, tmp_path, monkeypatch, capsys):
    from simmpnet.cli import build_parser

    parser = build_parser()
    for command in ("predict", "evaluate"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        assert "--precision {fp32,bf16,auto}" in capsys.readouterr().out
    checkpoint = tmp_path / "model.pt"
    model.save(checkpoint)
    inputs = tmp_path / "in"
    inputs.mkdir()
    np.savez(inputs / "slab.npz", image=np.random.default_rng(0).random((2, 50, 70), dtype=np.float32))
    predict = ["--quiet", "predict", "--checkpoint", str(checkpoint), "--input", str(inputs), "--device", "cpu"]
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    for name, flags in (("default", []), ("bf16", ["--precision", "bf16"]), ("auto", ["--precision", "auto"])):
        assert main([*predict, *flags, "--output", str(tmp_path / name)]) == 0
    recorded = {
        name: json.loads((tmp_path / name / "prediction_summary.json").read_text())["model"]["precision"]
        for name in ("default", "bf16", "auto")
    }
    assert recorded == {"default": "fp32", "bf16": "bf16", "auto": "fp32"}  # auto: no bf16 units (patched)
    with np.load(tmp_path / "default" / "slab.npz") as fp32, np.load(tmp_path / "bf16" / "slab.npz") as bf16:
        assert fp32["label"].shape == bf16["label"].shape == (2, 50, 70)
    evaluate = ["--quiet", "evaluate", "--checkpoint", str(checkpoint), "--data", str(brain_data)]
    evaluate += ["--max-overlays", "0"]
    assert main([*evaluate, "--precision", "bf16", "--output", str(tmp_path / "eval")]) == 0
    metrics = tmp_path / "eval"
    assert json.loads((metrics / "metrics.json").read_text())["precision"] == "bf16"
    assert "bf16 autocast" in (metrics / "metrics.md").read_text()
    capsys.readouterr()
    scored = ["--quiet", "evaluate", "--predictions", str(tmp_path / "default")]
    scored += ["--labels", str(tmp_path / "default")]
    assert main([*scored, "--precision", "bf16", "--output", str(tmp_path / "scored")]) == 2
    assert "--precision: not used when scoring --predictions" in capsys.readouterr().err
