"""Retrieval candidate pool of one split, and the ``scores.npz`` artifact every method writes.

Candidates are the unique *normalised* report texts of the split (see :func:`normalise`), in order of
first appearance when the split's pairs are sorted by ``pair_id``. Query ``i`` is the ``i``-th pair of
the split (same order); its true candidate is ``pair_text_idx[i]``.

``scores.npz`` (contract, ``docs/architecture.md``): ``scores`` float32 (n_queries, n_candidates),
``pair_ids`` int64 (n_queries,), ``candidate_texts`` unicode (n_candidates,), ``pair_text_idx`` int64
(n_queries,).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrclip.data.io import atomic_path
from cxrclip.errors import CxrclipError

SCORE_KEYS = ("scores", "pair_ids", "candidate_texts", "pair_text_idx")
_WHITESPACE = re.compile(r"\s+")
_TRAILING = re.compile(r"[\s.,;:!?]+$")


def normalise(text: str) -> str:
    """Canonical form used to de-duplicate reports: lowercase, runs of whitespace -> one space,
    trailing punctuation (``. , ; : ! ?``) and spaces stripped, leading spaces stripped.

    ``"Normal chest x-.  "`` and ``"normal  chest x-"`` both become ``"normal chest x-"``.
    """
    text = _WHITESPACE.sub(" ", str(text).lower()).strip()
    return _TRAILING.sub("", text)


@dataclass(frozen=True)
class Candidates:
    """The candidate pool of one split.

    ``texts``: unique normalised texts (n_candidates); ``pair_text_idx``: int64 (n_pairs,) index into
    ``texts`` of each pair's true text; ``pair_ids``: int64 (n_pairs,) the pairs' ids, ascending
    (the query order).
    """

    texts: list[str]
    pair_text_idx: np.ndarray
    pair_ids: np.ndarray

    @property
    def n_candidates(self) -> int:
        return len(self.texts)


def sort_pairs(pairs_split: pd.DataFrame) -> pd.DataFrame:
    """Pairs ordered by ``pair_id`` with a fresh 0..n-1 index (the query order)."""
    return pairs_split.sort_values("pair_id", kind="stable").reset_index(drop=True)


def build_candidates(pairs_split: pd.DataFrame) -> Candidates:
    """Candidate pool of the pairs in ``pairs_split`` (columns ``pair_id``, ``text``; any order)."""
    missing = {"pair_id", "text"} - set(pairs_split.columns)
    if missing:
        raise CxrclipError(f"pairs table lacks column(s) {sorted(missing)}")
    ordered = sort_pairs(pairs_split)
    index_of: dict[str, int] = {}
    pair_text_idx = np.empty(len(ordered), dtype=np.int64)
    for row, text in enumerate(ordered["text"].tolist()):
        key = normalise(text)
        pair_text_idx[row] = index_of.setdefault(key, len(index_of))
    return Candidates(
        texts=list(index_of),
        pair_text_idx=pair_text_idx,
        pair_ids=ordered["pair_id"].to_numpy(dtype=np.int64),
    )


def scores_dict(scores: np.ndarray, candidates: Candidates) -> dict[str, np.ndarray]:
    """Assemble the ``scores.npz`` dict for a (n_queries, n_candidates) matrix over ``candidates``."""
    scores = np.asarray(scores, dtype=np.float32)
    out = {
        "scores": scores,
        "pair_ids": np.asarray(candidates.pair_ids, dtype=np.int64),
        "candidate_texts": np.asarray(candidates.texts, dtype=str),
        "pair_text_idx": np.asarray(candidates.pair_text_idx, dtype=np.int64),
    }
    validate_scores(out)
    return out


def validate_scores(data: dict[str, Any]) -> None:
    """Raise :class:`CxrclipError` when a scores dict breaks the contract (keys, shapes, finiteness)."""
    missing = [k for k in SCORE_KEYS if k not in data]
    if missing:
        raise CxrclipError(f"scores lack key(s) {missing}; expected {list(SCORE_KEYS)}")
    scores = np.asarray(data["scores"])
    n_q = len(data["pair_ids"])
    n_c = len(data["candidate_texts"])
    if scores.shape != (n_q, n_c):
        raise CxrclipError(f"scores shape {scores.shape} != (n_queries={n_q}, n_candidates={n_c})")
    idx = np.asarray(data["pair_text_idx"])
    if idx.shape != (n_q,) or (n_q and (idx.min() < 0 or idx.max() >= n_c)):
        raise CxrclipError(
            "pair_text_idx must hold one candidate index in [0, n_candidates) per query"
        )
    if not np.isfinite(scores).all():
        raise CxrclipError(f"scores hold {int((~np.isfinite(scores)).sum())} non-finite value(s)")


def save_scores(path: str | Path, data: dict[str, Any]) -> None:
    """Validate and write ``data`` to ``path`` as an uncompressed ``.npz``, atomically."""
    validate_scores(data)
    arrays = {
        "scores": np.asarray(data["scores"], dtype=np.float32),
        "pair_ids": np.asarray(data["pair_ids"], dtype=np.int64),
        "candidate_texts": np.asarray(data["candidate_texts"], dtype=str),
        "pair_text_idx": np.asarray(data["pair_text_idx"], dtype=np.int64),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def load_scores(path: str | Path) -> dict[str, np.ndarray]:
    """Read a ``scores.npz`` written by :func:`save_scores` (no pickle) and validate it."""
    path = Path(path)
    if not path.exists():
        raise CxrclipError(
            f"scores file not found: {path} (run `cxrclip score` for this method first)"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise CxrclipError(f"cannot read scores file {path}: {exc}") from exc
    validate_scores(data)
    return data
