"""``cxrclip finetune``: outputs, MLflow logging (resumed into the same run) and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cxrclip.cli import main
from cxrclip.evaluation.baselines import train_report_texts
from cxrclip.models.factory import create_clip
from cxrclip.training.data import load_splits
from cxrclip.training.loop import fit
from cxrclip.training.recipe import TrainRecipe
from cxrclip.training.toydata import make_toy_dataset, register_micro_model
from cxrclip.training.tracking import MlflowTracker
from cxrclip.training.validation import build_validation_set

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("toy")
    make_toy_dataset(folder, n_reports=30, image_size=32, seed=3)
    return folder


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    """One sqlite store for the module (creating one costs seconds); each test uses its own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _params(tmp_path: Path, uri: str = "", experiment: str = "test-finetune", **train) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"] = {"name": register_micro_model(), "pretrained": "none"}
    params["train"].update({"epochs": 2, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "workers": 0,
                            "pin_memory": False, **train})
    params["mlflow"] = {"tracking_uri": uri or f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": experiment}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _argv(tmp_path: Path, toy: Path, *extra: str, params: Path | None = None) -> list[str]:
    return ["finetune", "--params", str(params or _params(tmp_path)), "--pairs", str(toy / "pairs.parquet"),
            "--reports", str(toy / "reports.parquet"), "--cache", str(toy / "images.npy"),
            "--out-dir", str(tmp_path / "out"), *extra]


def test_cli_writes_outputs_and_logs_one_mlflow_run(toy, tmp_path, monkeypatch, mlflow_uri):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(_argv(tmp_path, toy, params=_params(tmp_path, mlflow_uri, "cli-run"))) == 0
    out = tmp_path / "out"
    for name in ("model.safetensors", "history.csv", "steps.csv", "train_metrics.json", "checkpoints/last.pt"):
        assert (out / name).exists(), name
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    exp = client.get_experiment_by_name("cli-run")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "finetune"
    assert run.data.params["train.lr"] == "0.001" and run.data.params["model.pretrained"] == "none"
    assert run.data.tags["checkpoint"] == str((out / "checkpoints" / "last.pt").resolve())
    n_steps = len(pd.read_csv(out / "steps.csv"))
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == n_steps
    per_epoch = client.get_metric_history(run.info.run_id, "val/report/i2t_R_at_5")
    assert [m.step for m in per_epoch] == [1, 2]
    assert "model/model.safetensors" in [a.path for a in client.list_artifacts(run.info.run_id, "model")]


def test_log_model_false_skips_the_weights_but_keeps_the_checkpoint_tag(toy, tmp_path, monkeypatch, mlflow_uri):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(_argv(tmp_path, toy, params=_params(tmp_path, mlflow_uri, "no-weights", log_model=False))) == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("no-weights").experiment_id])
    assert client.list_artifacts(run.info.run_id) == [] and "checkpoint" in run.data.tags


def test_training_resumed_after_a_crash_continues_the_same_mlflow_run(toy, tmp_path, mlflow_uri):
    uri = mlflow_uri
    recipe = TrainRecipe(epochs=3, batch_size=8, lr=1e-3, warmup_steps=1, workers=0, pin_memory=False)

    def attempt(on_step=None):
        torch.manual_seed(0)
        bundle = create_clip(register_micro_model(), "none")
        splits = load_splits(toy / "pairs.parquet", toy / "images.npy", bundle.tokenizer)
        vset = build_validation_set(splits["val"], pd.read_parquet(toy / "reports.parquet"),
                                    train_report_texts(pd.read_parquet(toy / "pairs.parquet")))
        tracker = MlflowTracker(uri, "resume-test")
        fit(bundle, splits["train"], vset, recipe, tmp_path / "out", 0, on_step=on_step, tracker=tracker)
        return tracker.run_id

    steps_per_epoch = int((pd.read_parquet(toy / "pairs.parquet")["split"] == "train").sum()) // 8

    def crash(step, epoch):
        if epoch == 1:
            raise RuntimeError("simulated crash in epoch 2")

    with pytest.raises(RuntimeError, match="simulated crash"):
        attempt(crash)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (crashed,) = client.search_runs([client.get_experiment_by_name("resume-test").experiment_id])
    assert crashed.info.status == "FAILED"
    resumed_id = attempt()
    assert resumed_id == crashed.info.run_id
    assert client.get_run(resumed_id).info.status == "FINISHED"
    steps = sorted({m.step for m in client.get_metric_history(resumed_id, "train/loss")})
    assert steps == list(range(1, 3 * steps_per_epoch + 1))


def test_missing_inputs_and_bad_cache_end_with_a_message_not_a_traceback(toy, tmp_path, capsys):
    argv = _argv(tmp_path, toy, "--no-mlflow")
    missing = list(argv)
    missing[missing.index("--pairs") + 1] = str(tmp_path / "nope.parquet")
    assert main(missing) == 2
    assert "pairs table not found" in capsys.readouterr().err
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 8, 8), dtype=np.float32))
    wrong = list(argv)
    wrong[wrong.index("--cache") + 1] = str(bad)
    assert main(wrong) == 2
    assert "must hold uint8 (N, S, S) images" in capsys.readouterr().err
    big = list(argv)
    big[big.index("--params") + 1] = str(_params(tmp_path, batch_size=4096))
    assert main(big) == 2
    assert "exceeds the" in capsys.readouterr().err
