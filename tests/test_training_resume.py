"""A fine-tuning run SIGKILLed mid-epoch and resumed ends with the weights of an uninterrupted run (CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from cxrclip.training.checkpoint import load_checkpoint
from cxrclip.training.toydata import make_toy_dataset

sys.path.insert(0, str(Path(__file__).parent))
from test_training_fit import FAST, final_weights, max_abs_diff, steps_per_epoch, train_toy  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("toy")
    make_toy_dataset(folder, n_reports=40, image_size=32, seed=1)
    return folder


CHILD = """
import logging, sys, time
from pathlib import Path
import torch
sys.path.insert(0, {tests!r})
from test_training_fit import FAST, train_toy
logging.basicConfig(level=logging.INFO)
kill_at = int(sys.argv[1])
def on_step(step, epoch):
    if step == kill_at:
        Path({marker!r}).write_text(str(epoch))
        time.sleep(300)  # the parent SIGKILLs us here, mid-epoch
train_toy(Path({data!r}), Path({out!r}), FAST.replace(epochs=3), on_step=on_step if kill_at else None)
"""


def test_sigkill_mid_epoch_then_resume_ends_with_the_weights_of_an_uninterrupted_run(toy, tmp_path):
    out, marker = tmp_path / "killed", tmp_path / "marker"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(Path(__file__).parent), marker=str(marker), data=str(toy), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    spe = steps_per_epoch(toy)
    kill_at = spe + 2  # mid second epoch
    child = subprocess.Popen([sys.executable, str(script), str(kill_at)], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 50
    while not marker.exists():
        assert child.poll() is None and time.time() < deadline, "child ended before reaching the kill step"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    assert marker.read_text() == "1"  # killed in the second epoch (0-based 1)
    killed_at = load_checkpoint(out / "checkpoints" / "last.pt")
    assert killed_at["epoch"] == 1 and killed_at["step"] == spe and not (out / "model.safetensors").exists()
    resumed = subprocess.run([sys.executable, str(script), "0"], env=env, stderr=subprocess.PIPE, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr
    reference, _ = train_toy(toy, tmp_path / "uninterrupted", FAST.replace(epochs=3))
    # tolerance: exact (CPU, same thread count); the run is a pure function of seed and data
    assert max_abs_diff(final_weights(out), final_weights(tmp_path / "uninterrupted")) == 0.0
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["train_loss"].tolist() == [h["train_loss"] for h in reference.history]
    assert pd.read_csv(out / "steps.csv")["step"].tolist() == list(range(1, 3 * spe + 1))
