"""Retrieval metrics as small pure functions over numpy arrays.

Shapes: ``scores`` (n_queries, n_candidates), higher = more similar; ``true_idx`` int (n_queries,);
``positives`` / ``relevant`` bool (n_queries, n_candidates). Ranks are 1-based.

Tie rule (one rule, used everywhere): **pessimistic** - a relevant candidate ranks *after* every
non-relevant candidate with an equal score (a model that gives the same score to everything gets the
worst possible rank, not the best). Among themselves, tied candidates of the same relevance keep
ascending candidate-index order. Consequences: with a single true candidate,
``rank = #{j : scores[i, j] >= scores[i, true_idx[i]]}``; in the paper protocol (pair-level pool with
duplicated texts) an exact duplicate of the true report ties with it and is ranked first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


def true_ranks(scores: np.ndarray, true_idx: np.ndarray) -> np.ndarray:
    """Pessimistic 1-based rank of each query's single true candidate, int64 (n_queries,).

    ``rank_i = #{j : scores[i, j] >= scores[i, true_idx[i]]}`` (the true item counts itself).
    """
    scores = np.asarray(scores)
    rows = np.arange(scores.shape[0])
    true_score = scores[rows, np.asarray(true_idx)]
    return (scores >= true_score[:, None]).sum(axis=1).astype(np.int64)


def positive_ranks(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Pessimistic 1-based rank of the best-ranked positive per query, int64 (n_queries,).

    ``rank_i = 1 + #{negatives j : scores[i, j] >= max over positives p of scores[i, p]}``.
    Every row must hold at least one positive (ValueError otherwise).
    """
    scores = np.asarray(scores)
    positives = np.asarray(positives, dtype=bool)
    if scores.shape != positives.shape:
        raise ValueError(f"scores {scores.shape} and positives {positives.shape} differ in shape")
    if not positives.any(axis=1).all():
        raise ValueError("every query needs at least one positive candidate")
    best = np.where(positives, scores, -np.inf).max(axis=1)
    return 1 + ((scores >= best[:, None]) & ~positives).sum(axis=1).astype(np.int64)


def tie_averaged_hits(scores: np.ndarray, true_idx: np.ndarray, k: int) -> np.ndarray:
    """Per-query probability float64 (n,) that the single true candidate lands in the top ``k`` when
    ties are broken uniformly at random (what an unstable argsort gives on average).

    With ``g`` candidates scoring strictly higher and ``e`` scoring equal (the true one included):
    ``clip(k - g, 0, e) / e``. Not the tie rule of the other metrics; used for ``paper/top*_random_ties``.
    """
    scores = np.asarray(scores)
    true_score = scores[np.arange(scores.shape[0]), np.asarray(true_idx)][:, None]
    greater = (scores > true_score).sum(axis=1)
    equal = (scores == true_score).sum(axis=1)
    return np.clip(k - greater, 0, equal) / equal


def hits_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-query hit indicator float64 (n,): 1.0 where ``rank <= k``."""
    return (np.asarray(ranks) <= k).astype(np.float64)


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """R@K: fraction of queries whose (best) true candidate ranks within the top ``k``."""
    return float(hits_at_k(ranks, k).mean())


def reciprocal_ranks(ranks: np.ndarray) -> np.ndarray:
    """Per-query ``1 / rank`` float64 (n,); its mean is the MRR."""
    return 1.0 / np.asarray(ranks, dtype=np.float64)


def mean_rank(ranks: np.ndarray) -> float:
    """Arithmetic mean of the 1-based ranks."""
    return float(np.mean(ranks))


def median_rank(ranks: np.ndarray) -> float:
    """``floor(median(ranks))`` (even n: floor of the mean of the two middle ranks), as open_clip."""
    return float(np.floor(np.median(ranks)))


def rank_metrics(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """``R@k`` for each k, ``MRR``, ``mean_rank`` and ``median_rank`` of 1-based ``ranks``."""
    out = {f"R@{k}": recall_at_k(ranks, k) for k in ks}
    out["MRR"] = float(reciprocal_ranks(ranks).mean())
    out["mean_rank"] = mean_rank(ranks)
    out["median_rank"] = median_rank(ranks)
    return out


def chance_hit_at_k(n_candidates: int, n_positives: np.ndarray, k: int) -> np.ndarray:
    """Expected Hit@K (= R@K) under uniformly random ranking, per query float64 (n,).

    ``1 - C(n - m, k) / C(n, k)`` with n candidates of which m are positive (k capped at n).
    """
    m = np.asarray(n_positives, dtype=np.float64)
    k = min(int(k), int(n_candidates))
    miss = np.ones_like(m)
    for i in range(k):  # C(n-m, k) / C(n, k) = prod_i (n - m - i) / (n - i)
        miss *= np.clip(n_candidates - m - i, 0, None) / (n_candidates - i)
    return 1.0 - miss


def chance_precision_at_k(n_candidates: int, n_positives: np.ndarray) -> np.ndarray:
    """Expected P@K under uniformly random ranking, per query float64 (n,): ``m / n`` (any k <= n)."""
    return np.asarray(n_positives, dtype=np.float64) / float(n_candidates)


def pessimistic_order(scores: np.ndarray, relevant: np.ndarray, k: int | None = None) -> np.ndarray:
    """Candidate indices per query, best first, int64 (n_queries, k or n_candidates).

    Sorted by descending score; ties: non-relevant before relevant, then ascending index.
    """
    scores = np.asarray(scores)
    relevant = np.asarray(relevant, dtype=bool)
    order = np.lexsort((relevant.astype(np.int8), -scores.astype(np.float64)), axis=-1)
    return order[:, :k] if k is not None else order


def precision_at_k(order: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-query P@K float64 (n,): fraction of the first ``k`` of ``order`` that are relevant."""
    rows = np.arange(order.shape[0])[:, None]
    return np.asarray(relevant, dtype=bool)[rows, order[:, :k]].mean(axis=1)


def cosine_summary(
    scores: np.ndarray, true_idx: np.ndarray, top1_idx: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-query scores float64 (n,): of the true candidate (``true``), of the top-1 candidate
    (``top1``) and the mean over all non-true candidates (``negative``; NaN if there are none)."""
    scores = np.asarray(scores, dtype=np.float64)
    rows = np.arange(scores.shape[0])
    true = scores[rows, true_idx]
    n_neg = scores.shape[1] - 1
    negative = (scores.sum(axis=1) - true) / n_neg if n_neg > 0 else np.full_like(true, np.nan)
    return {"true": true, "top1": scores[rows, top1_idx], "negative": negative}


def paper_protocol_ranks(scores: np.ndarray, pair_text_idx: np.ndarray) -> dict[str, np.ndarray]:
    """Ranks under the study's protocol: every image against every image's text (n_pairs pool).

    Builds the (n_pairs, n_pairs) matrix ``scores[:, pair_text_idx]`` with identity ground truth, no
    de-duplication. Returns ``strict``: pessimistic rank of the diagonal (duplicated texts - also the
    other images of the same report - tie with it and rank first); ``any``: rank of the best column
    holding the same text as the query's (a hit whenever the top text *equals* the true text);
    ``matrix``: the (n_pairs, n_pairs) score matrix itself.
    """
    idx = np.asarray(pair_text_idx)
    paper = np.asarray(scores)[:, idx]
    strict = true_ranks(paper, np.arange(len(idx)))
    same_text = idx[:, None] == idx[None, :]
    return {"strict": strict, "any": positive_ranks(paper, same_text), "matrix": paper}


def bootstrap_counts(n_clusters: int, n_boot: int, seed: int) -> np.ndarray:
    """Resample ``n_clusters`` clusters with replacement ``n_boot`` times: int64 (n_boot, n_clusters)
    holding how often each cluster was drawn (each row sums to n_clusters). Seeded, deterministic."""
    rng = np.random.default_rng(seed)
    if n_clusters == 0:
        return np.zeros((n_boot, 0), dtype=np.int64)
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot)


def bootstrap_mean_ci(
    values: np.ndarray, weights: np.ndarray, ci: float = 0.95, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of weighted means.

    ``values``: (n_items,) or (n_items, n_metrics) per-query metric values; ``weights``:
    (n_boot, n_items) resampling multiplicities (e.g. ``bootstrap_counts(...)[:, cluster_of_item]``);
    ``mask``: optional bool (n_items,) restricting the queries (a subset). Returns ``(low, high)``,
    each shaped like one row of ``values`` (NaN where no resample holds a query).
    """
    values = np.asarray(values, dtype=np.float64)
    flat = values.ndim == 1
    v = values[:, None] if flat else values
    w = np.asarray(weights, dtype=np.float64)
    if mask is not None:
        w = w * np.asarray(mask, dtype=np.float64)[None, :]
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (w @ v) / total[:, None]
    alpha = (1.0 - ci) / 2.0
    if not np.isfinite(means).any():
        nan = np.full(v.shape[1], np.nan)
        low, high = nan, nan.copy()
    else:
        low, high = np.nanquantile(means, [alpha, 1.0 - alpha], axis=0)
    return (low[0], high[0]) if flat else (low, high)


def mcnemar(hits_a: np.ndarray, hits_b: np.ndarray) -> dict[str, float]:
    """McNemar test of paired binary outcomes (e.g. top-1 hits of two methods on the same queries).

    ``b`` = a hit, b miss; ``c`` = a miss, b hit. ``p_exact``: two-sided binomial test of b among
    b + c at 0.5; ``p_chi2``: chi-square (1 dof) with continuity correction ``max(|b-c|-1, 0)^2/(b+c)``.
    Both p-values are 1.0 when b + c = 0. Assumes independent queries.
    """
    a = np.asarray(hits_a).astype(bool)
    b_ = np.asarray(hits_b).astype(bool)
    b = int((a & ~b_).sum())
    c = int((~a & b_).sum())
    if b + c == 0:
        return {"b": 0.0, "c": 0.0, "p_exact": 1.0, "p_chi2": 1.0}
    p_exact = float(stats.binomtest(b, b + c, 0.5).pvalue)
    chi2 = max(abs(b - c) - 1.0, 0.0) ** 2 / (b + c)
    return {
        "b": float(b),
        "c": float(c),
        "p_exact": p_exact,
        "p_chi2": float(stats.chi2.sf(chi2, 1)),
    }
