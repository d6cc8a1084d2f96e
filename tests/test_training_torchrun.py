"""``torchrun --nproc_per_node=2 -m cxrclip finetune`` (gloo, CPU) matches a single process on the same
global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch
import yaml

from cxrclip.cli import main
from cxrclip.training.checkpoint import load_checkpoint
from cxrclip.training.toydata import make_toy_dataset

ROOT = Path(__file__).resolve().parents[1]


def _params_file(tmp_path: Path) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"] = {"name": "cxrclip-tiny", "pretrained": "none"}
    params["train"].update(
        epochs=2, batch_size=8, lr=1e-3, warmup_steps=2, freeze_epochs=1, workers=0, pin_memory=False, device="cpu"
    )
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_torchrun_two_process_finetune_matches_single_process(tmp_path):
    data = tmp_path / "data"
    make_toy_dataset(data, n_reports=24, image_size=32, seed=2)
    params = _params_file(tmp_path)
    common = ["-m", "cxrclip", "finetune", "--params", str(params), "--pairs", str(data / "pairs.parquet"),
              "--reports", str(data / "reports.parquet"), "--cache", str(data / "images.npy"), "--no-mlflow"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torch.set_num_threads(1)
    assert main([*common[2:], "--out-dir", str(tmp_path / "one")]) == 0  # the single process: in this one
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ddp = subprocess.run([*torchrun, *common, "--out-dir", str(tmp_path / "two")], env=env,
                         capture_output=True, text=True, cwd=tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "rank 1/2 on cpu (gloo)" in ddp.stderr
    one_w = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")["model"]
    two_w = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")["model"]
    diff = max(float((one_w[k] - two_w[k]).abs().max()) for k in one_w)
    print(f"max |w_ddp - w_single| = {diff:.3e}")
    assert diff < 1e-4, f"max |w_ddp - w_single| = {diff:.2e}"  # float reduction order differs across ranks
    one_steps = pd.read_csv(tmp_path / "one" / "steps.csv")
    two_steps = pd.read_csv(tmp_path / "two" / "steps.csv")
    assert len(one_steps) == len(two_steps) >= 4
    loss_diff = (one_steps["loss"] - two_steps["loss"]).abs().max()
    print(f"max |loss_ddp - loss_single| = {loss_diff:.3e} over {len(one_steps)} steps")
    assert loss_diff < 1e-4
