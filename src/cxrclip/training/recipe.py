"""The fine-tuning recipe: the ``train`` section of ``params.yaml`` as a typed, validated object.

Defaults in ``params.yaml`` are the study's recipe (5 epochs, Adam β 0.9/0.98, lr 1e-5 with linear
warmup, batch 32, τ = 0.07, projection heads trained first). Keys and types are fixed by
``src/cxrclip/schemas/params.schema.json``; this module adds the cross-field checks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cxrclip.errors import CxrclipError


@dataclass(frozen=True)
class TrainRecipe:
    """Hyperparameters of one fine-tuning run (units in the field comments).

    ``batch_size`` is the *global* batch: under torchrun each of ``world_size`` ranks takes
    ``batch_size / world_size`` consecutive samples of it, so the recipe means the same thing on any
    number of processes.
    """

    epochs: int = 5
    batch_size: int = 32  # global samples per optimizer step
    lr: float = 1.0e-5  # peak learning rate
    optimizer: str = "adam"  # adam | adamw
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1.0e-6
    weight_decay: float = 0.0  # not applied to gains, biases, embeddings-of-dim-1 or logit scale
    warmup_steps: int = 100  # linear warmup, lr(step) = lr * (step + 1) / warmup_steps
    schedule: str = "constant"  # constant | cosine (after warmup)
    logit_scale_init: float = 1 / 0.07  # exp(logit_scale) at start: 1 / temperature
    learn_logit_scale: bool = True
    grad_clip: float | None = None  # max global L2 grad norm; None = off
    freeze_epochs: int = 1  # first epochs: only projections (+ logit scale) train
    unlock_image_layers: int = -1  # then: last N image tower groups trainable (-1 = all)
    unlock_text_layers: int = -1  # then: last N text tower groups trainable (-1 = all)
    sampling: str = "every_image"  # every_image | one_view_per_report
    mask_false_negatives: bool = False  # same-text pairs in a batch are not negatives
    augment: bool = False  # light on-device augmentation (affine + brightness/contrast)
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    compile: bool = False  # torch.compile the model
    workers: int = 2  # DataLoader worker processes (0 = load in the training process)
    pin_memory: bool = True  # page-locked host batches (CUDA only)
    device: str = "auto"  # auto | cpu | cuda
    select_metric: str = "val/report/i2t_R@5"  # best-epoch metric (names ending in "loss": lower is better)
    early_stopping_patience: int | None = None  # epochs without improvement before stopping
    resume: str = "auto"  # auto (continue from checkpoints/last.pt) | never
    log_model: bool = True  # log the best weights to MLflow (false: checkpoint path tag only)

    @property
    def maximize_metric(self) -> bool:
        """True when a larger ``select_metric`` is better (every metric except losses)."""
        return not self.select_metric.endswith("loss")

    def to_dict(self) -> dict[str, Any]:
        """Plain-python dict of every field (betas as a list), e.g. for MLflow params."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    def replace(self, **changes: Any) -> TrainRecipe:
        """A copy with ``changes`` applied (validated)."""
        return recipe_from_params({**self.to_dict(), **changes})


_CHOICES = {
    "optimizer": ("adam", "adamw"),
    "schedule": ("constant", "cosine"),
    "sampling": ("every_image", "one_view_per_report"),
    "precision": ("auto", "fp32", "bf16"),
    "device": ("auto", "cpu", "cuda"),
    "resume": ("auto", "never"),
}


def recipe_from_params(train: dict[str, Any]) -> TrainRecipe:
    """Build a :class:`TrainRecipe` from the ``train`` params dict (missing keys take the defaults).

    Raises :class:`CxrclipError` naming the key for an unknown key or a value out of range.
    """
    fields = {f.name for f in dataclasses.fields(TrainRecipe)}
    unknown = sorted(set(train) - fields)
    if unknown:
        raise CxrclipError(f"unknown train.* key(s) {unknown}; known: {sorted(fields)}")
    values = dict(train)
    if "betas" in values:
        betas = tuple(float(b) for b in values["betas"])
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise CxrclipError(f"train.betas must be two numbers in [0, 1), got {values['betas']}")
        values["betas"] = betas
    recipe = TrainRecipe(**values)
    for key, choices in _CHOICES.items():
        if getattr(recipe, key) not in choices:
            raise CxrclipError(f"train.{key} must be one of {list(choices)}, got {getattr(recipe, key)!r}")
    checks = [
        (recipe.epochs >= 1, "train.epochs must be >= 1"),
        (recipe.batch_size >= 2, "train.batch_size must be >= 2 (a contrastive batch needs negatives)"),
        (recipe.lr > 0, "train.lr must be > 0"),
        (recipe.eps > 0, "train.eps must be > 0"),
        (recipe.weight_decay >= 0, "train.weight_decay must be >= 0"),
        (recipe.warmup_steps >= 0, "train.warmup_steps must be >= 0"),
        (recipe.logit_scale_init > 0, "train.logit_scale_init must be > 0"),
        (recipe.grad_clip is None or recipe.grad_clip > 0, "train.grad_clip must be > 0 or null"),
        (recipe.freeze_epochs >= 0, "train.freeze_epochs must be >= 0"),
        (recipe.unlock_image_layers >= -1, "train.unlock_image_layers must be >= -1"),
        (recipe.unlock_text_layers >= -1, "train.unlock_text_layers must be >= -1"),
        (recipe.workers >= 0, "train.workers must be >= 0"),
        (
            recipe.early_stopping_patience is None or recipe.early_stopping_patience >= 1,
            "train.early_stopping_patience must be >= 1 or null",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise CxrclipError(message)
    return recipe
