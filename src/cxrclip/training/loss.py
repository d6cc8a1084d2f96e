"""Symmetric contrastive loss: open_clip's :class:`~open_clip.loss.ClipLoss`, plus optional masking of
in-batch false negatives.

Across ranks it gathers the features as open_clip does. The trainer uses ``local_loss=True,
gather_with_grad=True`` under torchrun: every rank scores its own rows against the global batch and
gradients flow back to the rank that made each feature, so the DDP-averaged gradient equals the
single-process gradient of the same global batch (not ``1 / world_size`` of it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss


class ContrastiveLoss(ClipLoss):
    """``ClipLoss`` whose ``forward`` also takes ``groups`` (int64 (b,)): samples with equal group ids
    (two images of one report, or identical texts) are removed from each other's negatives.

    With ``groups=None`` the result is exactly ``ClipLoss.forward``.
    """

    def forward(  # type: ignore[override]
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        groups: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean symmetric cross-entropy; features (b, D) L2-normalised, ``logit_scale`` = exp(learned)."""
        if groups is None:
            return super().forward(image_features, text_features, logit_scale)
        logits_per_image, logits_per_text = self.get_logits(image_features, text_features, logit_scale)
        labels = self.get_ground_truth(image_features.device, logits_per_image.shape[0])
        all_groups = gather_groups(groups, self.world_size) if self.world_size > 1 else groups
        row_groups = groups if (self.world_size > 1 and self.local_loss) else all_groups
        mask = row_groups.view(-1, 1) == all_groups.view(1, -1)  # (rows, global columns)
        mask[torch.arange(len(labels), device=mask.device), labels] = False  # keep the positive
        logits_per_image = logits_per_image.masked_fill(mask, float("-inf"))
        logits_per_text = logits_per_text.masked_fill(mask, float("-inf"))
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def gather_groups(groups: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate every rank's ``groups`` in rank order (no gradient)."""
    import torch.distributed as dist

    parts = [torch.empty_like(groups) for _ in range(world_size)]
    dist.all_gather(parts, groups.contiguous())
    return torch.cat(parts)


def make_loss(rank: int = 0, world_size: int = 1) -> ContrastiveLoss:
    """The trainer's loss: plain ``ClipLoss`` semantics on one process, local loss with gradient
    gathering across ``world_size`` > 1 processes."""
    distributed = world_size > 1
    return ContrastiveLoss(
        local_loss=distributed, gather_with_grad=distributed, cache_labels=True, rank=rank, world_size=world_size
    )
