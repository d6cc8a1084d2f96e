"""Unit tests of the fine-tuning building blocks: recipe, schedule, sampling, loss, freezing, checkpoints."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from open_clip.loss import ClipLoss

from cxrclip.errors import CxrclipError
from cxrclip.models.factory import create_clip
from cxrclip.training import checkpoint as ckpt
from cxrclip.training.data import augment_images, augment_params, epoch_batches, rank_slice
from cxrclip.training.freeze import phase_of_epoch, projection_parameter_names, set_trainable
from cxrclip.training.loss import ContrastiveLoss
from cxrclip.training.recipe import TrainRecipe, recipe_from_params
from cxrclip.training.schedule import lr_at
from cxrclip.training.toydata import register_micro_model

torch.set_num_threads(1)


def test_params_yaml_train_section_builds_the_study_recipe():
    import yaml

    params = yaml.safe_load(open("params.yaml"))
    recipe = recipe_from_params(params["train"])
    # the dataclass defaults are the study's recipe, as in params.yaml (which rounds 1/0.07)
    assert recipe.replace(logit_scale_init=1 / 0.07) == TrainRecipe()
    assert (recipe.epochs, recipe.batch_size, recipe.lr, recipe.betas) == (5, 32, 1e-5, (0.9, 0.98))
    assert math.isclose(1 / recipe.logit_scale_init, 0.07, rel_tol=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"optimizer": "sgd"}, "train.optimizer"), ({"batch_size": 1}, "batch_size"), ({"betas": [0.9]}, "betas"),
     ({"warmpu_steps": 3}, "unknown")],
)
def test_bad_recipe_value_raises_error_naming_the_key(change, message):
    with pytest.raises(CxrclipError, match=message):
        recipe_from_params({**TrainRecipe().to_dict(), **change})


def test_linear_warmup_then_constant_or_cosine():
    assert lr_at(0, 1.0, 4, 20) == pytest.approx(0.25)
    assert lr_at(3, 1.0, 4, 20) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 4, 20, "constant") == 1.0
    assert lr_at(4, 1.0, 4, 20, "cosine") == pytest.approx(1.0)
    assert lr_at(12, 1.0, 4, 20, "cosine") == pytest.approx(0.5)
    assert lr_at(20, 1.0, 4, 20, "cosine") == pytest.approx(0.0)
    assert lr_at(0, 1.0, 0, 20) == 1.0  # no warmup


def test_every_image_epoch_uses_each_pair_once_and_is_a_function_of_seed_and_epoch():
    groups = np.repeat(np.arange(10), 2)  # 10 reports x 2 images
    a = epoch_batches(groups, 4, "every_image", seed=3, epoch=1)
    assert a.shape == (5, 4) and sorted(a.ravel().tolist()) == list(range(20))
    assert np.array_equal(a, epoch_batches(groups, 4, "every_image", seed=3, epoch=1))
    assert not np.array_equal(a, epoch_batches(groups, 4, "every_image", seed=3, epoch=2))
    assert epoch_batches(groups, 6, "every_image", 0, 0).shape == (3, 6)  # partial batch dropped


def test_one_view_per_report_draws_one_image_of_every_report():
    groups = np.repeat(np.arange(8), 3)
    batches = epoch_batches(groups, 4, "one_view_per_report", seed=0, epoch=0)
    assert batches.shape == (2, 4)
    assert sorted(groups[batches.ravel()].tolist()) == list(range(8))
    views = {tuple(epoch_batches(groups, 8, "one_view_per_report", 0, e).ravel() % 3) for e in range(5)}
    assert len(views) > 1  # different views in different epochs


def test_rank_slices_tile_the_global_batch_and_indivisible_batch_is_refused():
    assert [rank_slice(8, r, 2) for r in range(2)] == [slice(0, 4), slice(4, 8)]
    with pytest.raises(CxrclipError, match="not divisible"):
        rank_slice(9, 0, 2)


def _features(n: int, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=-1)
    return img, txt


def test_masked_loss_equals_clip_loss_when_all_groups_differ():
    img, txt = _features(6)
    scale = torch.tensor(14.0)
    expected = ClipLoss()(img, txt, scale)
    assert torch.allclose(ContrastiveLoss()(img, txt, scale, torch.arange(6)), expected)
    assert torch.equal(ContrastiveLoss()(img, txt, scale, None), expected)


def test_masked_loss_removes_same_report_negatives():
    img, txt = _features(4)
    txt[1] = txt[0]  # two images of one report share the text
    scale = torch.tensor(10.0)
    groups = torch.tensor([0, 0, 1, 2])
    logits = scale * img @ txt.T
    keep = ~torch.tensor([[False, True, False, False], [True, False, False, False], [False] * 4, [False] * 4])
    i2t = torch.stack([-torch.log_softmax(logits[i][keep[i]], 0)[keep[i][: i + 1].sum() - 1] for i in range(4)])
    t2i = torch.stack([-torch.log_softmax(logits.T[i][keep[i]], 0)[keep[i][: i + 1].sum() - 1] for i in range(4)])
    expected = (i2t.mean() + t2i.mean()) / 2
    got = ContrastiveLoss()(img, txt, scale, groups)
    assert torch.allclose(got, expected, atol=1e-6)
    assert got < ClipLoss()(img, txt, scale)  # the duplicate no longer counts against the positive


@pytest.fixture(scope="module")
def micro_bundle():
    torch.manual_seed(0)
    return create_clip(register_micro_model(), "none")


def test_freezing_schedule_trains_projections_first_then_unlocks_towers(micro_bundle):
    model = micro_bundle.model
    assert phase_of_epoch(0, 1) == "projections" and phase_of_epoch(1, 1) == "unlocked"
    heads = set(projection_parameter_names(model))
    assert heads == {"visual.proj", "text_projection"}
    first = set(set_trainable(model, "projections", learn_logit_scale=True))
    assert first == heads | {"logit_scale"}
    fixed_scale = set(set_trainable(model, "projections", learn_logit_scale=False))
    assert fixed_scale == heads
    everything = set(set_trainable(model, "unlocked", -1, -1))
    assert everything == {n for n, _ in model.named_parameters()}
    partial = set(set_trainable(model, "unlocked", unlock_image_layers=2, unlock_text_layers=0))
    # open_clip groups from the output end: [proj], [last block + ln_post]
    assert partial == heads | {"logit_scale"} | {n for n in everything if n.startswith(("visual.transformer.resblocks.0.", "visual.ln_post."))}


def test_checkpoint_round_trips_with_weights_only_and_restores_rngs(tmp_path, micro_bundle):
    model = micro_bundle.model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.zeros(2, 3, 32, 32), torch.zeros(2, 16, dtype=torch.long))[0].sum().backward()
    opt.step()
    state = {"epoch": 2, "step": 7, "model": ckpt.cpu_state_dict(model), "optimizer": opt.state_dict(),
             "rng": ckpt.capture_rng_state(), "history": [{"epoch": 1, "train_loss": 1.5, "phase": "unlocked"}]}
    expected_draws = (torch.rand(3), np.random.rand(3), __import__("random").random())
    path = tmp_path / "checkpoints" / "last.pt"
    ckpt.save_checkpoint(path, state)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left behind
    torch.rand(5), np.random.rand(5)  # move the RNGs on
    loaded = ckpt.load_checkpoint(path)
    ckpt.restore_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), expected_draws[0])
    assert np.array_equal(np.random.rand(3), expected_draws[1])
    assert __import__("random").random() == expected_draws[2]
    assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
    opt2 = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optimizer"])
    assert loaded["history"] == state["history"] and loaded["step"] == 7


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"format": ckpt.FORMAT, "x": _Payload()}, fh, protocol=2)
    with pytest.raises(CxrclipError, match="cannot read checkpoint"):
        ckpt.load_checkpoint(path)
    assert "code ran" not in capsys.readouterr().out


def test_augmentation_is_light_deterministic_and_keeps_range():
    pixels = torch.linspace(0, 255, 32 * 32).view(1, 32, 32).repeat(4, 1, 1)
    draws = augment_params(4, seed=11)
    a, b = augment_images(pixels, draws), augment_images(pixels, augment_params(4, seed=11))
    assert torch.equal(a, b) and a.shape == pixels.shape
    assert a.min() >= 0 and a.max() <= 255
    assert 0 < (a - pixels).abs().mean() < 40  # changed, but lightly
