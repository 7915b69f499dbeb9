import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


#: torch's intra-op thread count at the start of the session.  Code under test changes it for
#: the whole process (the `threads` option of a training run), and kernels split their sums by
#: thread, so every test starts from this count: no result depends on the tests run before.
SESSION_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.set_num_threads(SESSION_THREADS)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(SESSION_THREADS)


@pytest.fixture(scope="session")
def brain_data(tmp_path_factory):
    """The real demo data (Colin27 MRI + AAL lobes) in the Synapse layout, plus a list
    `lists/small.txt` of 16 training slices for quick training runs."""
    from simmpnet.data import prepare_brain_demo

    root = prepare_brain_demo(tmp_path_factory.mktemp("brain"))
    names = (root / "lists" / "train.txt").read_text().split()
    (root / "lists" / "small.txt").write_text("\n".join(names[::7][:16]) + "\n")
    return root


def small_train_config(data_root, output_dir, **changes):
    """A Sim-MPNet `tiny` run shrunk to 64 px slices for tests (seconds per epoch)."""
    config = {
        "data_root": str(data_root),
        "train_list": "small",
        "val_list": "test_vol",
        "n_classes": 9,
        "model": "simmpnet",
        "variant": "tiny",
        "model_overrides": {"img_size_a": 64, "img_size_b": 56},
        "input_size": 64,
        "warmup_iters": 5,
        "batch_size": 4,
        "epochs": 3,
        "lr": 1e-3,
        "wld_start_epoch": 1,
        "eval_start_epoch": 2,
        "eval_every": 1,
        "device": "cpu",
        "threads": 1,
        "progress": False,
        "output_dir": str(output_dir),
    }
    config.update(changes)
    return config


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a `python -m simmpnet` child process: this one, with the package's
    source folder importable."""
    return dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"), **extra)
