"""Export of the eval network (ONNX, TorchScript), the dense memory read it relies on, and
torch.compile of the whole network."""
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from simmpnet import SimMPNet
from simmpnet.cli import main
from simmpnet.data.transforms import resize_image
from simmpnet.models.memory import PrototypeMemory

SIZE = 64  # tiny at 64 px (as the training tests): seconds per export


def _tiny(seed: int = 0) -> SimMPNet:
    torch.manual_seed(seed)
    model = SimMPNet.from_variant("tiny", n_classes=9, img_size_a=SIZE, img_size_b=56)
    model.end_warmup()  # k-means start: eval forwards read the memory
    assert not model.in_warmup
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return _tiny()


@pytest.fixture(scope="module")
def brain_slices(brain_data):
    """All test slices of the demo (3 volumes of 10 slices), at 64 px."""
    chosen = []
    for case in (brain_data / "lists" / "test_vol.txt").read_text().split():
        with h5py.File(brain_data / "test_vol_h5" / f"{case}.npy.h5", "r") as handle:
            chosen.extend(np.asarray(handle["image"], dtype=np.float32))
    assert len(chosen) == 30
    batch = np.stack([resize_image(s, (SIZE, SIZE)) for s in chosen])[:, None]
    return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(before, model):
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


# ------------------------------------------------------------------ dense memory read
@pytest.mark.parametrize("rows, num_k, dim", [(1000, 9, 32), (37, 10, 16), (5, 4, 8)])
def test_dense_read_equals_chunked_read(rows, num_k, dim):
    torch.manual_seed(rows)
    memory = PrototypeMemory(dim, num_k, pool_size=20, warmup_iters=0)
    memory.bank.normal_()
    memory.prototypes.normal_()
    queries = torch.randn(rows, dim, requires_grad=True)
    chunked = memory.read(queries, dense=False)
    dense = memory.read(queries, dense=True)
    torch.testing.assert_close(dense, chunked, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(chunked)
    (grad_chunked,) = torch.autograd.grad((chunked * weights).sum(), queries)
    (grad_dense,) = torch.autograd.grad((dense * weights).sum(), queries)
    torch.testing.assert_close(grad_dense, grad_chunked, rtol=1e-4, atol=1e-5)
    # the default outside tracing/compiling is the chunked read
    assert torch.equal(memory.read(queries), chunked)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace is deprecated
def test_dense_read_is_chosen_while_tracing():
    memory = PrototypeMemory(8, 3, pool_size=5, warmup_iters=0)
    calls = []
    original = memory.read_dense
    memory.read_dense = lambda q: calls.append(1) or original(q)
    torch.jit.trace(lambda q: memory.read(q), torch.randn(6, 8), check_trace=False)
    assert calls


# ------------------------------------------------------------------------ export
def _assert_logits_match(got: np.ndarray, reference: np.ndarray) -> None:
    """All slices but two agree to 1e-3, all to 2e-2: a memory read's category is an argmax with
    near-ties here (relative gap ~2e-5, the size of rounding differences between CPU kernels),
    and taking the other category moves that slice's logits by up to ~5e-3."""
    off = [i for i, (g, r) in enumerate(zip(got, reference)) if not np.allclose(g, r, rtol=1e-3, atol=1e-3)]
    assert len(off) <= 2, f"slices {off} differ by more than 1e-3"
    np.testing.assert_allclose(got, reference, rtol=0, atol=2e-2)


def test_onnx_export_predicts_the_same_labels_on_real_slices(model, brain_slices, tmp_path):
    from simmpnet.export import export_model, onnxruntime_session

    before = _state(model)
    path = export_model(model, tmp_path / "tiny.onnx", "onnx")
    _assert_same_state(before, model)
    assert not model.training
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.onnx"]  # no temporary file left

    session = onnxruntime_session(path)
    with torch.no_grad():
        reference = model(brain_slices)
    got = session.run(None, {"image": brain_slices.numpy()})[0]
    assert got.shape == tuple(reference.shape) == (len(brain_slices), 9, SIZE, SIZE)
    agreement = (got.argmax(1) == reference.argmax(1).numpy()).mean()
    assert agreement >= 0.999, agreement
    _assert_logits_match(got, reference.numpy())
    # dynamic batch: one slice alone gives what it gives inside the batch
    single = session.run(None, {"image": brain_slices[:1].numpy()})[0]
    np.testing.assert_allclose(single, got[:1], rtol=1e-4, atol=1e-4)
    # with ONNX Runtime's NCHWc layout rewrite on (faster; no exact ties in this network)
    rewritten = onnxruntime_session(path, threads=1, layout_rewrite=True).run(None, {"image": brain_slices.numpy()})[0]
    assert (rewritten.argmax(1) == reference.argmax(1).numpy()).mean() >= 0.999
    _assert_logits_match(rewritten, reference.numpy())


def test_torchscript_export_predicts_the_same_labels_on_real_slices(model, brain_slices, tmp_path):
    from simmpnet.export import check_export, export_model

    before = _state(model)
    path = export_model(model, tmp_path / "tiny.pt", "torchscript")
    _assert_same_state(before, model)
    check = check_export(model, path, "torchscript", x=brain_slices[:5])
    assert check.label_agreement >= 0.999 and check.max_abs_diff < 1e-3


def test_export_writes_atomically(model, tmp_path, monkeypatch):
    import simmpnet.export as export

    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")

    def broken(model, example, tmp, *args):
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(export, "_write_onnx", broken)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export.export_model(model, target, "onnx")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_cli_export_round_trip(model, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    checkpoint = model.save(tmp_path / "model.pt")
    out = tmp_path / "out" / "model.onnx"
    assert main(["--quiet", "export", "--checkpoint", str(checkpoint), "--output-file", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "same label for 100" in printed, printed


def test_cli_export_bad_checkpoint_is_one_clean_line(tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    assert main(["export", "--checkpoint", str(missing), "--output-file", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.pt" in err and "Traceback" not in err
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert main(["export", "--checkpoint", str(garbage), "--output-file", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "garbage.pt" in err
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------ torch.compile
@pytest.mark.slow
def test_torch_compile_matches_eager_in_eval_and_training():
    import copy

    eager = _tiny(seed=1)
    # timm's relative-position MLP of MaxViT-rmlp has dropout (p=0.125) in training; the
    # compiled graph draws other random numbers, so switch it off for the comparison.
    for module in eager.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, backend="aot_eager", dynamic=False)
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-4)

    eager.train()
    compiled_model.train()
    expected = eager(x)
    got = compiled(x)
    assert len(got) == len(expected) == 4
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    sum(h.mean() for h in got).backward()
    grads = [p.grad for p in compiled_model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
    assert sum(g is not None for g in grads) > 0.9 * len(grads)
    # The compiled training forward records the memory change the eager one records, and it
    # commits to the same slots.  Which key a slot takes is a top-K ranking of positions with
    # near-ties (relative gaps ~2e-6, below the compiled graph's rounding), so the values
    # written are compared through their inputs, not after the ranking.
    blocks = list(zip(eager.dmwla_blocks(), compiled_model.dmwla_blocks()))
    for a, b in blocks:
        assert a._pending["kind"] == b._pending["kind"] == "update"
        assert a._pending["autocast"] == b._pending["autocast"]
        torch.testing.assert_close(b._pending["input"], a._pending["input"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(b._pending["next_key"], a._pending["next_key"], rtol=1e-4, atol=1e-4)
    banks = [a.memory.bank.clone() for a, _ in blocks]
    assert compiled_model.commit_memory() == eager.commit_memory() == len(eager.dmwla_blocks())
    for old, (a, b) in zip(banks, blocks):
        rewritten = (a.memory.bank != old).any(0)
        assert rewritten.any() and torch.equal((b.memory.bank != old).any(0), rewritten)
        torch.testing.assert_close(b.key_weight, a.key_weight, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_torch_compile_has_no_graph_break():
    """The warm-up state is answered from a Python mirror of the counter and the memory read
    has a static-shape form under compile: one graph per forward."""
    model = _tiny(seed=2)
    x = torch.rand(2, 1, SIZE, SIZE)
    for mode in ("eval", "train"):
        getattr(model, mode)()
        explained = torch._dynamo.explain(model)(x)
        torch._dynamo.reset()
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    model.discard_memory()
