"""Evaluate one method's ``scores.npz``: every metric, pool sizes, bootstrap intervals, rankings.

Metric keys (flat, ``/``-grouped, identical for every method; K in ``eval.ks``):

- ``paper/top1``, ``paper/top3``: the study's protocol - every test image against every test image's
  text (pool = n_pairs, identity ground truth, no de-duplication, pessimistic ties, so an exact
  duplicate of the true report - including the other view of the same study - outranks it);
  ``paper/top1_any``, ``paper/top3_any``: the optimistic variant, a hit when a top text *equals* the
  true text; ``paper/top1_random_ties``, ``paper/top3_random_ties``: the expected hit rate when ties
  are broken uniformly at random (the closest match to an unstable argsort as in the study);
- ``report/i2t_R@K``, ``report/i2t_MRR``, ``report/i2t_mean_rank``, ``report/i2t_median_rank``:
  image -> text over the unique normalised texts of the split; ``report/t2i_*``: text -> image, each
  unique text a query, its positives every image of a report with that text (pool = n_pairs);
  ``report/*_R@K_chance``: the expected value under random ranking;
- ``label/P@K``, ``label/Hit@K`` (+ ``_chance``): relevant = candidate whose label set (MeSH major ->
  groups, ``labels.py``) intersects the query's; candidate labels = labels of the first report (pair
  order) having that text; chance P@K = m/n, chance Hit@K = 1 - C(n-m, K)/C(n, K), averaged over queries;
- ``text/top1_tfidf_cosine``: TF-IDF cosine (space fitted on training reports) between the top-1
  retrieved text and the true text (1.0 on an exact hit);
- ``cosine/true_mean``, ``cosine/top1_mean``, ``cosine/negative_mean``: mean score of the true
  candidate, of the top-1 candidate and of all non-true candidates (cosine for CLIP methods);
- ``normal/<key>``, ``abnormal/<key>``: the same with queries restricted by ``is_normal`` (candidates
  stay the whole pool);
- ``<key>_ci_low``, ``<key>_ci_high``: percentile bootstrap interval (``eval.ci``) resampling
  *reports* (all images of a drawn report come along), ``eval.bootstrap`` resamples, seeded by
  ``seed``; given for every mean-type metric (not for chance values, median ranks or pools);
- ``pool/*``: candidate pool and query counts (``pool/queries``, ``pool/reports``,
  ``pool/report_candidates``, ``pool/paper_candidates``, ``pool/label_candidates``,
  ``pool/text_queries``, ``pool/image_candidates``; subsets state ``<subset>/pool/queries`` and
  ``<subset>/pool/text_queries``).

Ties: pessimistic everywhere (see ``metrics.py``). A metric over an empty subset is NaN.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxrclip.errors import CxrclipError
from cxrclip.evaluation import metrics as M
from cxrclip.evaluation.baselines import fit_tfidf
from cxrclip.evaluation.candidates import build_candidates, sort_pairs, validate_scores
from cxrclip.evaluation.labels import label_match, mesh_to_labels

log = logging.getLogger(__name__)

SUBSETS = ("normal", "abnormal")
PAPER_KS = (1, 3)
TOP_N = 10
TOP_TEXTS = 3


def _metric_spec(ks: Sequence[int]) -> list[tuple[str, str, str, str]]:
    """(key, table, column, kind): table 'image'|'text'; kind 'mean' (with CI) | 'chance' | 'median'."""
    spec: list[tuple[str, str, str, str]] = []
    for k in PAPER_KS:
        spec.append((f"paper/top{k}", "image", f"hit{k}_paper", "mean"))
    for k in PAPER_KS:
        spec.append((f"paper/top{k}_any", "image", f"hit{k}_paper_any", "mean"))
    for k in PAPER_KS:
        spec.append((f"paper/top{k}_random_ties", "image", f"hit{k}_paper_random_ties", "mean"))
    for direction, table in (("i2t", "image"), ("t2i", "text")):
        suffix = "report" if direction == "i2t" else "t2i"
        for k in ks:
            spec.append((f"report/{direction}_R@{k}", table, f"hit{k}_{suffix}", "mean"))
            spec.append(
                (f"report/{direction}_R@{k}_chance", table, f"chance{k}_{suffix}", "chance")
            )
        spec.append((f"report/{direction}_MRR", table, f"rr_{suffix}", "mean"))
        rank_col = "true_rank" if direction == "i2t" else "rank_t2i"
        spec.append((f"report/{direction}_mean_rank", table, rank_col, "mean"))
        spec.append((f"report/{direction}_median_rank", table, rank_col, "median"))
    for k in ks:
        spec.append((f"label/P@{k}", "image", f"p{k}_label", "mean"))
        spec.append((f"label/P@{k}_chance", "image", f"p{k}_label_chance", "chance"))
        spec.append((f"label/Hit@{k}", "image", f"hit{k}_label", "mean"))
        spec.append((f"label/Hit@{k}_chance", "image", f"hit{k}_label_chance", "chance"))
    spec += [
        ("text/top1_tfidf_cosine", "image", "top1_tfidf_cosine", "mean"),
        ("cosine/true_mean", "image", "true_score", "mean"),
        ("cosine/top1_mean", "image", "top1_score", "mean"),
        ("cosine/negative_mean", "image", "negative_mean_score", "mean"),
    ]
    return spec


def _eval_settings(cfg: Mapping[str, Any]) -> tuple[list[int], int, float, int]:
    ks = sorted({int(k) for k in cfg.get("ks", (1, 5, 10))})
    if not ks or ks[0] < 1:
        raise CxrclipError(f"eval.ks must be positive integers, got {cfg.get('ks')}")
    return ks, int(cfg.get("bootstrap", 1000)), float(cfg.get("ci", 0.95)), int(cfg.get("seed", 0))


def _check_scores_match(scores_npz: Mapping[str, Any], pairs_sorted: pd.DataFrame) -> None:
    candidates = build_candidates(pairs_sorted)
    ok = (
        np.array_equal(np.asarray(scores_npz["pair_ids"]), candidates.pair_ids)
        and list(map(str, scores_npz["candidate_texts"])) == candidates.texts
        and np.array_equal(np.asarray(scores_npz["pair_text_idx"]), candidates.pair_text_idx)
    )
    if not ok:
        raise CxrclipError(
            "scores do not match the pairs of the evaluated split (different pair_ids or candidate "
            "texts; stale scores.npz?): rerun `cxrclip score` for this method"
        )


def _report_labels(pairs_sorted: pd.DataFrame, reports: pd.DataFrame) -> list[frozenset[str]]:
    mesh = reports.drop_duplicates("report_id").set_index("report_id")["mesh_major"]
    missing = set(pairs_sorted["report_id"]) - set(mesh.index)
    if missing:
        raise CxrclipError(
            f"{len(missing)} report(s) of the pairs are absent from the reports table, e.g. {sorted(missing)[:3]}"
        )
    cache: dict[str, frozenset[str]] = {}
    out = []
    for rid in pairs_sorted["report_id"]:
        if rid not in cache:
            terms = mesh[rid]
            cache[rid] = mesh_to_labels([] if terms is None else list(terms))
        out.append(cache[rid])
    return out


def per_query_tables(
    scores_npz: Mapping[str, Any],
    pairs_split: pd.DataFrame,
    reports: pd.DataFrame,
    train_texts: Sequence[str],
    ks: Sequence[int] = (1, 5, 10),
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """Per-query metric vectors.

    Returns ``image`` (one row per image query, pair_id order: ids, ``is_normal``, rankings and every
    per-query metric column), ``text`` (one row per unique text: ``report_id`` of its first report,
    ``is_normal``, ``rank_t2i``, ``hit{k}_t2i``, ``chance{k}_t2i``, ``rr_t2i``) and the pool sizes.
    """
    validate_scores(dict(scores_npz))
    pairs_sorted = sort_pairs(pairs_split)
    _check_scores_match(scores_npz, pairs_sorted)
    scores = np.asarray(scores_npz["scores"], dtype=np.float32)
    true_idx = np.asarray(scores_npz["pair_text_idx"], dtype=np.int64)
    texts = [str(t) for t in scores_npz["candidate_texts"]]
    n_q, n_c = scores.shape
    rows = np.arange(n_q)
    is_true = np.zeros((n_q, n_c), dtype=bool)
    is_true[rows, true_idx] = True

    image = pd.DataFrame(
        {
            "pair_id": pairs_sorted["pair_id"].to_numpy(np.int64),
            "image_id": pairs_sorted["image_id"].astype(str).to_numpy()
            if "image_id" in pairs_sorted
            else "",
            "report_id": pairs_sorted["report_id"].astype(str).to_numpy(),
            "is_normal": pairs_sorted["is_normal"].to_numpy(bool),
            "true_idx": true_idx,
        }
    )
    # paper protocol
    paper = M.paper_protocol_ranks(scores, true_idx)
    image["paper_rank"] = paper["strict"]
    for k in PAPER_KS:
        image[f"hit{k}_paper"] = M.hits_at_k(paper["strict"], k)
        image[f"hit{k}_paper_any"] = M.hits_at_k(paper["any"], k)
        image[f"hit{k}_paper_random_ties"] = M.tie_averaged_hits(paper["matrix"], rows, k)
    # report level, image -> text
    ranks = M.true_ranks(scores, true_idx)
    image["true_rank"] = ranks
    for k in ks:
        image[f"hit{k}_report"] = M.hits_at_k(ranks, k)
        image[f"chance{k}_report"] = M.chance_hit_at_k(n_c, np.ones(n_q), k)
    image["rr_report"] = M.reciprocal_ranks(ranks)
    # top lists (pessimistic order: the true text after equal-scored others)
    top_n = min(max(TOP_N, max(ks)), n_c)
    order = M.pessimistic_order(scores, is_true, top_n)
    image["top10_idx"] = list(order[:, :TOP_N])
    image["top10_scores"] = list(scores[rows[:, None], order[:, :TOP_N]].astype(np.float32))
    image["true_text"] = [texts[i] for i in true_idx]
    image["top_texts"] = [[texts[j] for j in row[:TOP_TEXTS]] for row in order]
    # label level
    pair_labels = _report_labels(pairs_sorted, reports)
    first_pair_of_text = np.unique(true_idx, return_index=True)[1]
    cand_labels = [pair_labels[i] for i in first_pair_of_text]
    relevant = label_match(pair_labels, cand_labels)
    label_order = M.pessimistic_order(scores, relevant, max(ks))
    n_rel = relevant.sum(axis=1)
    hit_rank = np.full(n_q, n_c + 1, dtype=np.int64)  # no relevant candidate: never a hit
    has_relevant = n_rel > 0
    hit_rank[has_relevant] = M.positive_ranks(scores[has_relevant], relevant[has_relevant])
    for k in ks:
        image[f"p{k}_label"] = M.precision_at_k(label_order, relevant, min(k, n_c))
        image[f"p{k}_label_chance"] = M.chance_precision_at_k(n_c, n_rel)
        image[f"hit{k}_label"] = M.hits_at_k(hit_rank, k)
        image[f"hit{k}_label_chance"] = M.chance_hit_at_k(n_c, n_rel, k)
    image["n_label_relevant"] = n_rel
    # text similarity of the top-1 retrieved report
    if not train_texts:
        log.warning("no training reports: fitting TF-IDF on the candidate texts instead")
    vectorizer = fit_tfidf(list(train_texts) or texts)
    cand_vecs = vectorizer.transform(texts)
    top1 = order[:, 0]
    tfidf_cos = np.asarray(cand_vecs[top1].multiply(cand_vecs[true_idx]).sum(axis=1)).ravel()
    image["top1_tfidf_cosine"] = np.where(top1 == true_idx, 1.0, tfidf_cos)
    # score summaries
    cos = M.cosine_summary(scores, true_idx, top1)
    image["true_score"] = cos["true"]
    image["top1_score"] = cos["top1"]
    image["negative_mean_score"] = cos["negative"]

    # text -> image: each unique text is a query; positives = images whose true text it is
    t2i_ranks = M.positive_ranks(scores.T, is_true.T)
    n_pos = is_true.sum(axis=0)
    text = pd.DataFrame(
        {
            "text_idx": np.arange(n_c),
            "report_id": image["report_id"].to_numpy()[first_pair_of_text],
            "is_normal": image["is_normal"].to_numpy()[first_pair_of_text],
            "rank_t2i": t2i_ranks,
            "rr_t2i": M.reciprocal_ranks(t2i_ranks),
        }
    )
    for k in ks:
        text[f"hit{k}_t2i"] = M.hits_at_k(t2i_ranks, k)
        text[f"chance{k}_t2i"] = M.chance_hit_at_k(n_q, n_pos, k)

    pools = {
        "pool/queries": float(n_q),
        "pool/reports": float(image["report_id"].nunique()),
        "pool/report_candidates": float(n_c),
        "pool/paper_candidates": float(n_q),
        "pool/label_candidates": float(n_c),
        "pool/text_queries": float(n_c),
        "pool/image_candidates": float(n_q),
    }
    return image, text, pools


def summarise(
    image: pd.DataFrame,
    text: pd.DataFrame,
    pools: Mapping[str, float],
    ks: Sequence[int] = (1, 5, 10),
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Flat metrics dict from the per-query tables (see the module docstring for the keys)."""
    spec = _metric_spec(ks)
    report_codes, report_index = pd.factorize(image["report_id"])
    code_of = {rid: i for i, rid in enumerate(report_index)}
    text_codes = np.array([code_of[r] for r in text["report_id"]], dtype=np.int64)
    counts = M.bootstrap_counts(len(report_index), n_boot, seed) if n_boot > 0 else None
    tables = {"image": (image, report_codes), "text": (text, text_codes)}
    masks = {
        "": {"image": np.ones(len(image), bool), "text": np.ones(len(text), bool)},
        "normal/": {
            "image": image["is_normal"].to_numpy(bool),
            "text": text["is_normal"].to_numpy(bool),
        },
        "abnormal/": {
            "image": ~image["is_normal"].to_numpy(bool),
            "text": ~text["is_normal"].to_numpy(bool),
        },
    }
    out: dict[str, float] = dict(pools)
    for prefix, mask_of in masks.items():
        if prefix:
            out[f"{prefix}pool/queries"] = float(mask_of["image"].sum())
            out[f"{prefix}pool/text_queries"] = float(mask_of["text"].sum())
        for table_name, (table, codes) in tables.items():
            mask = mask_of[table_name]
            entries = [s for s in spec if s[1] == table_name]
            for key, _, column, kind in entries:
                values = table[column].to_numpy(np.float64)[mask]
                if kind == "median":
                    out[prefix + key] = M.median_rank(values) if values.size else math.nan
                else:
                    out[prefix + key] = float(values.mean()) if values.size else math.nan
            ci_entries = [s for s in entries if s[3] == "mean"]
            columns = [s[2] for s in ci_entries]
            if counts is not None and mask.any():
                values = table[columns].to_numpy(np.float64)
                low, high = M.bootstrap_mean_ci(values, counts[:, codes], ci, mask)
            else:
                low = high = np.full(len(columns), math.nan)
            for (key, *_), lo, hi in zip(ci_entries, low, high, strict=True):
                out[f"{prefix}{key}_ci_low"] = float(lo)
                out[f"{prefix}{key}_ci_high"] = float(hi)
    return out


def evaluate_scores(
    scores_npz: Mapping[str, Any],
    pairs_split: pd.DataFrame,
    reports: pd.DataFrame,
    train_texts: Sequence[str],
    cfg: Mapping[str, Any],
) -> tuple[dict[str, float], pd.DataFrame]:
    """All metrics of one method and its per-query rankings.

    ``scores_npz``: the scores dict (contract); ``pairs_split``: pairs of the evaluated split;
    ``reports``: reports table (``report_id``, ``mesh_major``); ``train_texts``: training report texts
    (TF-IDF space); ``cfg``: ``ks``, ``bootstrap``, ``ci``, ``seed``. Returns the flat metrics dict
    and the rankings table (one row per image query: ids, ``true_rank``, ``paper_rank``,
    ``top10_idx``, ``top10_scores``, ``true_text``, ``top_texts`` and the per-query metric columns
    ``hit1_paper``, ``hit{k}_report``, ``rr_report``, ``p{k}_label``, ``hit{k}_label``, ...).
    """
    ks, n_boot, ci, seed = _eval_settings(cfg)
    image, text, pools = per_query_tables(scores_npz, pairs_split, reports, train_texts, ks)
    metrics = summarise(image, text, pools, ks, n_boot, ci, seed)
    return metrics, image


#: Per-query columns of the rankings table that :func:`paired_comparison` compares by default.
COMPARABLE_COLUMNS = (
    "hit1_paper",
    "hit3_paper",
    "hit1_report",
    "hit5_report",
    "hit10_report",
    "rr_report",
    "p5_label",
    "hit5_label",
    "top1_tfidf_cosine",
)


def paired_comparison(
    metrics_a_per_query: Mapping[str, Any],
    metrics_b_per_query: Mapping[str, Any],
    report_ids: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    columns: Sequence[str] | None = None,
    hit_column: str = "hit1_report",
) -> dict[str, float]:
    """Paired comparison of methods A and B on the same queries (e.g. two rankings tables).

    For each per-query column c: ``c/a``, ``c/b`` (means), ``c/diff`` = mean(a) - mean(b) and its
    percentile bootstrap interval ``c/diff_ci_low``/``c/diff_ci_high`` resampling ``report_ids``
    (one per query) with replacement, seeded. McNemar on ``hit_column`` (top-1 hits): ``mcnemar/b``
    (A hit, B miss), ``mcnemar/c``, ``mcnemar/p_exact``, ``mcnemar/p_chi2``. Rows must be aligned
    (when both hold ``pair_id`` they must be equal).
    """
    if "pair_id" in metrics_a_per_query and "pair_id" in metrics_b_per_query:
        if not np.array_equal(
            np.asarray(metrics_a_per_query["pair_id"]), np.asarray(metrics_b_per_query["pair_id"])
        ):
            raise CxrclipError(
                "paired comparison needs the same queries in the same order (pair_id differ)"
            )
    if columns is None:
        columns = [
            c for c in COMPARABLE_COLUMNS if c in metrics_a_per_query and c in metrics_b_per_query
        ]
    codes, uniques = pd.factorize(pd.Series(list(report_ids)))
    a = np.column_stack([np.asarray(metrics_a_per_query[c], dtype=np.float64) for c in columns])
    b = np.column_stack([np.asarray(metrics_b_per_query[c], dtype=np.float64) for c in columns])
    if a.shape != b.shape or a.shape[0] != len(codes):
        raise CxrclipError("paired comparison: both methods and report_ids need one row per query")
    diff = a - b
    weights = M.bootstrap_counts(len(uniques), n_boot, seed)[:, codes]
    low, high = M.bootstrap_mean_ci(diff, weights, ci)
    out: dict[str, float] = {"n_queries": float(len(codes))}
    for i, c in enumerate(columns):
        out[f"{c}/a"] = float(a[:, i].mean())
        out[f"{c}/b"] = float(b[:, i].mean())
        out[f"{c}/diff"] = float(diff[:, i].mean())
        out[f"{c}/diff_ci_low"] = float(low[i])
        out[f"{c}/diff_ci_high"] = float(high[i])
    test = M.mcnemar(metrics_a_per_query[hit_column], metrics_b_per_query[hit_column])
    out.update({f"mcnemar/{k}": v for k, v in test.items()})
    return out


def json_ready(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """Metrics with NaN/inf replaced by ``None`` (strict JSON for DVC)."""
    return {k: (float(v) if math.isfinite(v) else None) for k, v in metrics.items()}
