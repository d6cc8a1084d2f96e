"""Freezing schedule: first only the projections (and the logit scale) train, then the towers unlock.

Tower unlocking reuses open_clip's lock options (``lock_image_tower(unlocked_groups=N)``,
``lock_text_tower(unlocked_layers=N)``; the same ``--lock-image-unlocked-groups`` /
``--lock-text-unlocked-layers`` semantics as ``open_clip_train``): ``N = -1`` unlocks the whole tower,
``N >= 0`` the last ``N`` layer groups counted from the output end. The projections stay trainable in
every phase.
"""

from __future__ import annotations

import torch

from cxrclip.errors import CxrclipError

#: Parameter names (exact) or prefixes (ending in ".") of the projection heads of open_clip models:
#: ViT ``visual.proj``, CLIP text ``text_projection``, CustomTextCLIP ``text.text_projection``,
#: timm towers ``visual.head.``, HF text towers ``text.proj.``, ModifiedResNet ``visual.attnpool.c_proj.``.
PROJECTION_NAMES = ("visual.proj", "text_projection", "text.text_projection")
PROJECTION_PREFIXES = ("visual.head.", "text.proj.", "visual.attnpool.c_proj.", "visual.proj.")


def projection_parameter_names(model: torch.nn.Module) -> list[str]:
    """Names of the projection-head parameters of ``model``; raise if the architecture has none known."""
    names = [
        n for n, _ in model.named_parameters() if n in PROJECTION_NAMES or n.startswith(PROJECTION_PREFIXES)
    ]
    if not names:
        raise CxrclipError(
            f"cannot find the projection heads of {type(model).__name__}; set train.freeze_epochs: 0"
        )
    return names


def phase_of_epoch(epoch: int, freeze_epochs: int) -> str:
    """``projections`` for 0-based ``epoch < freeze_epochs``, else ``unlocked``."""
    return "projections" if epoch < freeze_epochs else "unlocked"


def set_trainable(
    model: torch.nn.Module,
    phase: str,
    unlock_image_layers: int = -1,
    unlock_text_layers: int = -1,
    learn_logit_scale: bool = True,
) -> list[str]:
    """Set ``requires_grad`` for ``phase`` and return the trainable parameter names.

    ``projections``: projection heads (+ ``logit_scale`` if learned). ``unlocked``: additionally the
    image tower (last ``unlock_image_layers`` groups, -1 = all) and the text tower (likewise).
    """
    for p in model.parameters():
        p.requires_grad = False
    if phase == "unlocked":
        if unlock_image_layers == -1:
            for p in model.visual.parameters():
                p.requires_grad = True
        elif unlock_image_layers > 0:
            model.lock_image_tower(unlocked_groups=unlock_image_layers)
        if unlock_text_layers != 0:
            text_params = [p for n, p in model.named_parameters() if not n.startswith("visual.") and n != "logit_scale"]
            if unlock_text_layers == -1:
                for p in text_params:
                    p.requires_grad = True
            else:
                model.lock_text_tower(unlocked_layers=unlock_text_layers)
    elif phase != "projections":
        raise ValueError(f"unknown phase {phase!r}")
    params = dict(model.named_parameters())
    for name in projection_parameter_names(model):
        params[name].requires_grad = True
    if "logit_scale" in params:
        params["logit_scale"].requires_grad = learn_logit_scale
    if "logit_bias" in params:
        params["logit_bias"].requires_grad = False
    return [n for n, p in model.named_parameters() if p.requires_grad]
