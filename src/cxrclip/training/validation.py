"""Per-epoch validation through the evaluation code: image→report retrieval on the validation split.

Embeddings come from :mod:`cxrclip.evaluation.embed` and metrics from
:func:`cxrclip.evaluation.evaluate.evaluate_scores` (no bootstrap), exactly as the ``evaluate`` stage
computes them for the ``finetuned`` method: queries are the validation pairs, candidates the split's
unique normalised texts, ties pessimistic. The headline keys kept per epoch (:data:`KEPT_PREFIXES`):
``report/i2t_R@K``, ``report/i2t_MRR``, ``report/t2i_R@K``, ``label/P@K``, ``label/Hit@K``,
``paper/top1``, ``paper/top3``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from cxrclip.evaluation.candidates import build_candidates, scores_dict
from cxrclip.evaluation.embed import embed_images, embed_texts
from cxrclip.evaluation.evaluate import evaluate_scores
from cxrclip.models.factory import ClipBundle
from cxrclip.training.data import PairSet

DEFAULT_KS = (1, 5, 10)
KEPT_PREFIXES = ("report/i2t_R@", "report/i2t_MRR", "report/t2i_R@", "label/P@", "label/Hit@", "paper/top1", "paper/top3")


@dataclass
class ValidationSet:
    """What validation needs: the validation pairs and images (``pair_set``, pair_id order), the reports
    table (``report_id``, ``mesh_major``) for labels, the training report texts (TF-IDF space of the
    ``text/`` metric) and the cut-offs ``ks``."""

    pair_set: PairSet
    reports: pd.DataFrame
    train_texts: list[str]
    ks: tuple[int, ...] = DEFAULT_KS

    def __len__(self) -> int:
        return len(self.pair_set)


def build_validation_set(
    val: PairSet, reports: pd.DataFrame, train_texts: Sequence[str], ks: Sequence[int] = DEFAULT_KS
) -> ValidationSet:
    """Bundle the validation inputs (``reports`` needs ``report_id`` and ``mesh_major``)."""
    return ValidationSet(val, reports[["report_id", "mesh_major"]], [str(t) for t in train_texts], tuple(ks))


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device`` (a no-op context for full precision)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def keep_metric(key: str) -> bool:
    """True for the headline metrics logged per epoch (no CIs, chance levels or subsets)."""
    return key.startswith(KEPT_PREFIXES) and not key.endswith("_chance") and "_ci_" not in key and "_any" not in key \
        and "_random_ties" not in key


def validate(bundle: ClipBundle, vset: ValidationSet, device: torch.device, batch_size: int = 64) -> dict[str, float]:
    """Headline retrieval metrics of ``bundle.model`` on the validation set ({} when it is empty)."""
    if not len(vset):
        return {}
    pairs = vset.pair_set.pairs
    cache = vset.pair_set.images.numpy()  # rows already in pair_id order
    image = embed_images(bundle, cache, np.arange(len(pairs)), batch_size, device, progress=False)
    candidates = build_candidates(pairs)
    text = embed_texts(bundle, candidates.texts, batch_size, device, progress=False)
    scores = scores_dict(image @ text.T, candidates)
    cfg = {"ks": list(vset.ks), "bootstrap": 0, "ci": 0.95, "seed": 0}
    metrics, _ = evaluate_scores(scores, pairs, vset.reports, vset.train_texts, cfg)
    return {k: float(v) for k, v in metrics.items() if keep_metric(k)}
