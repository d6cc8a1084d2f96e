"""End-to-end tests of :func:`cxrclip.training.loop.fit` on generated pairs with a micro CLIP model (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from cxrclip.errors import CxrclipError
from cxrclip.evaluation.baselines import train_report_texts
from cxrclip.evaluation.embed import score_clip
from cxrclip.evaluation.evaluate import evaluate_scores
from cxrclip.models.factory import create_clip, load_finetuned
from cxrclip.training.checkpoint import load_checkpoint
from cxrclip.training.data import load_splits
from cxrclip.training.loop import fit
from cxrclip.training.recipe import TrainRecipe
from cxrclip.training.toydata import make_toy_dataset, register_micro_model
from cxrclip.training.validation import build_validation_set

torch.set_num_threads(1)

#: a recipe that trains the micro model in a few CPU seconds (5 steps per epoch on the toy data)
FAST = TrainRecipe(epochs=3, batch_size=8, lr=2e-3, warmup_steps=2, freeze_epochs=1, workers=0, pin_memory=False,
                   device="cpu")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("toy")
    make_toy_dataset(folder, n_reports=40, image_size=32, seed=1)
    return folder


def steps_per_epoch(data_dir: Path, batch_size: int = 8) -> int:
    pairs = pd.read_parquet(data_dir / "pairs.parquet")
    return int((pairs["split"] == "train").sum()) // batch_size


def train_toy(data_dir: Path, out_dir: Path, recipe: TrainRecipe, on_step=None, seed: int = 0):
    """Fit the micro model from seed-fixed random weights on the toy data in ``data_dir``."""
    torch.manual_seed(seed)
    bundle = create_clip(register_micro_model(), "none")
    splits = load_splits(data_dir / "pairs.parquet", data_dir / "images.npy", bundle.tokenizer)
    reports = pd.read_parquet(data_dir / "reports.parquet")
    train_texts = train_report_texts(pd.read_parquet(data_dir / "pairs.parquet"))
    vset = build_validation_set(splits["val"], reports, train_texts)
    return fit(bundle, splits["train"], vset, recipe, out_dir, seed, on_step=on_step), bundle


def final_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out_dir / "checkpoints" / "last.pt")["model"]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_fit_writes_the_contract_outputs_and_learns(toy, tmp_path):
    result, bundle = train_toy(toy, tmp_path, FAST.replace(epochs=4))
    history = pd.read_csv(tmp_path / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    for column in ("train_loss", "lr", "val/report/i2t_R@5", "val/label/P@5", "phase"):
        assert column in history.columns
    assert history["phase"].tolist() == ["projections", "unlocked", "unlocked", "unlocked"]
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    steps = pd.read_csv(tmp_path / "steps.csv")
    n_steps = 4 * steps_per_epoch(toy)
    assert steps["step"].tolist() == list(range(1, n_steps + 1))
    assert list(steps.columns) == ["step", "epoch", "loss", "lr"]
    assert steps["lr"].iloc[0] == pytest.approx(1e-3) and steps["lr"].iloc[1] == pytest.approx(2e-3)  # warmup
    metrics = json.loads((tmp_path / "train_metrics.json").read_text())
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    assert metrics["steps"] == n_steps and metrics["best_epoch"] == result.best_epoch
    best = history.loc[history["epoch"] == result.best_epoch, "val/report/i2t_R@5"].item()
    assert best == history["val/report/i2t_R@5"].max() == metrics["best/val/report/i2t_R@5"]
    # model.safetensors holds the best epoch's weights and loads into a fresh model
    exported = load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(exported[k], v) for k, v in load_file(tmp_path / "checkpoints" / "best.safetensors").items())
    fresh = load_finetuned(create_clip(register_micro_model(), "none"), tmp_path / "model.safetensors")
    assert torch.equal(fresh.model.visual.proj, exported["visual.proj"])
    # the best epoch's validation metrics are what the evaluate stage computes for these weights
    pairs = pd.read_parquet(toy / "pairs.parquet")
    val_pairs = pairs[pairs["split"] == "val"]
    scores, _ = score_clip(fresh, val_pairs, np.load(toy / "images.npy"), 64, "cpu", progress=False)
    stage, _ = evaluate_scores(scores, val_pairs, pd.read_parquet(toy / "reports.parquet"),
                               train_report_texts(pairs), {"ks": [1, 5, 10], "bootstrap": 0})
    for key in ("report/i2t_R@1", "report/i2t_R@5", "label/P@5", "report/i2t_MRR"):
        assert metrics[f"best/val/{key}"] == pytest.approx(stage[key], abs=1e-9), key


def test_same_seed_gives_identical_weights_and_rerun_of_a_finished_run_trains_nothing(toy, tmp_path):
    train_toy(toy, tmp_path / "a", FAST)
    train_toy(toy, tmp_path / "b", FAST)
    assert max_abs_diff(final_weights(tmp_path / "a"), final_weights(tmp_path / "b")) == 0.0
    calls = []
    result, _ = train_toy(toy, tmp_path / "a", FAST, on_step=lambda step, epoch: calls.append(step))
    assert calls == [] and len(result.history) == 3  # resumed after the last epoch: nothing to do
    assert max_abs_diff(final_weights(tmp_path / "a"), final_weights(tmp_path / "b")) == 0.0


def test_checkpoint_of_a_different_recipe_is_not_resumed(toy, tmp_path):
    train_toy(toy, tmp_path, FAST.replace(epochs=1))
    result, _ = train_toy(toy, tmp_path, FAST.replace(epochs=2, lr=1e-3))
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert pd.read_csv(tmp_path / "steps.csv")["lr"].max() == pytest.approx(1e-3)


def test_projection_phase_updates_only_projections_and_logit_scale(toy, tmp_path):
    torch.manual_seed(0)
    initial = {k: v.clone() for k, v in create_clip(register_micro_model(), "none").model.state_dict().items()}
    train_toy(toy, tmp_path, FAST.replace(epochs=1, freeze_epochs=1))
    after = final_weights(tmp_path)
    changed = {k for k in after if k != "logit_scale" and not torch.equal(after[k], initial[k])}
    assert changed == {"visual.proj", "text_projection"}
    assert float(after["logit_scale"].exp()) != pytest.approx(1 / 0.07, abs=1e-6)  # learned


def test_fixed_logit_scale_keeps_its_initial_temperature(toy, tmp_path):
    train_toy(toy, tmp_path, FAST.replace(epochs=2, learn_logit_scale=False, logit_scale_init=20.0))
    assert float(final_weights(tmp_path)["logit_scale"].exp()) == pytest.approx(20.0, rel=1e-6)


def test_early_stopping_ends_training_after_patience_epochs_without_improvement(toy, tmp_path):
    # toy validation has <= 10 distinct texts, so R@10 is 1.0 from the first epoch and never improves
    recipe = FAST.replace(epochs=6, select_metric="val/report/i2t_R@10", early_stopping_patience=2)
    result, _ = train_toy(toy, tmp_path, recipe)
    assert result.stopped_early and [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.best_epoch == 1


def test_optional_recipe_paths_train_with_finite_losses(toy, tmp_path):
    recipe = FAST.replace(
        epochs=2, optimizer="adamw", weight_decay=0.1, schedule="cosine", grad_clip=1.0, sampling="one_view_per_report",
        mask_false_negatives=True, augment=True, workers=1, unlock_image_layers=2, unlock_text_layers=1,
    )
    result, _ = train_toy(toy, tmp_path, recipe)
    losses = [s["loss"] for s in result.steps]
    assert len(losses) == 2 * (28 // 8) and np.isfinite(losses).all()  # 28 train reports, one view each


def test_unknown_select_metric_is_refused_with_the_known_names(toy, tmp_path):
    with pytest.raises(CxrclipError, match=r"select_metric 'val/report/R@5' is not a metric.*val/report/i2t_R@5"):
        train_toy(toy, tmp_path, FAST.replace(epochs=1, select_metric="val/report/R@5"))


def test_without_validation_pairs_the_best_epoch_is_chosen_by_train_loss(toy, tmp_path):
    torch.manual_seed(0)
    bundle = create_clip(register_micro_model(), "none")
    splits = load_splits(toy / "pairs.parquet", toy / "images.npy", bundle.tokenizer)
    result = fit(bundle, splits["train"], None, FAST, tmp_path, 0)
    losses = [h["train_loss"] for h in result.history]
    assert result.best_epoch == 1 + int(np.argmin(losses)) and (tmp_path / "model.safetensors").exists()


def test_batch_larger_than_the_training_set_is_refused(toy, tmp_path):
    with pytest.raises(CxrclipError, match="exceeds the"):
        train_toy(toy, tmp_path, FAST.replace(batch_size=512))
