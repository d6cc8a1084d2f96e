"""Non-CLIP baselines that write the same ``scores.npz`` as a model (see ``candidates.py``).

- ``random``: seeded i.i.d. uniform scores - the chance floor;
- ``tfidf_prior``: image-blind; every query ranks candidates by TF-IDF cosine to the centroid of the
  training reports, i.e. always answers with the "most typical report" (what answering "normal" gets);
- ``tfidf_indication``: the study's INDICATION text as the query against the candidate reports, in a
  TF-IDF space fitted on the training reports; ties (and empty / out-of-vocabulary indications) fall
  back to the prior order.

TF-IDF: scikit-learn ``TfidfVectorizer`` defaults (lowercase, word tokens of >= 2 characters, smooth
idf, L2-normalised rows), fitted on the normalised texts of the unique training reports.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer

from cxrclip.errors import CxrclipError
from cxrclip.evaluation.candidates import build_candidates, normalise, scores_dict, sort_pairs

METHODS = ("random", "tfidf_prior", "tfidf_indication")
#: Weight of the prior cosine added to indication scores; breaks ties (e.g. all-zero overlap)
#: by typicality while changing the order of candidates only when indication cosines differ by < 1e-3.
PRIOR_TIE_WEIGHT = 1e-3


def random_scores(n_queries: int, n_candidates: int, seed: int) -> np.ndarray:
    """Seeded i.i.d. Uniform[0, 1) scores, float32 (n_queries, n_candidates)."""
    rng = np.random.default_rng(seed)
    return rng.random((n_queries, n_candidates)).astype(np.float32)


def fit_tfidf(train_texts: Sequence[str]) -> TfidfVectorizer:
    """TF-IDF vectoriser fitted on ``train_texts`` (raises CxrclipError when they hold no words)."""
    texts = [normalise(t) for t in train_texts]
    vectorizer = TfidfVectorizer()
    try:
        vectorizer.fit(texts)
    except ValueError as exc:  # empty vocabulary
        raise CxrclipError(f"cannot fit TF-IDF on {len(texts)} training report(s): {exc}") from exc
    return vectorizer


def _prior(
    vectorizer: TfidfVectorizer, train_texts: Sequence[str], candidate_texts: Sequence[str]
) -> np.ndarray:
    """Cosine of each candidate to the centroid of the training reports' TF-IDF rows, float64 (n_c,)."""
    train = vectorizer.transform([normalise(t) for t in train_texts])
    centroid = np.asarray(train.mean(axis=0)).ravel()
    norm = np.linalg.norm(centroid)
    cand = vectorizer.transform(list(candidate_texts))
    return np.asarray(cand @ (centroid / norm if norm > 0 else centroid)).ravel()


def tfidf_prior_scores(
    train_texts: Sequence[str], candidate_texts: Sequence[str], n_queries: int
) -> np.ndarray:
    """Image-blind scores float32 (n_queries, n_candidates): every row is the candidates' TF-IDF
    cosine to the centroid of ``train_texts``."""
    prior = _prior(fit_tfidf(train_texts), train_texts, candidate_texts).astype(np.float32)
    return np.repeat(prior[None, :], n_queries, axis=0)


def tfidf_indication_scores(
    train_texts: Sequence[str], query_indications: Sequence[str], candidate_texts: Sequence[str]
) -> np.ndarray:
    """Scores float32 (n_queries, n_candidates) = TF-IDF cosine(indication_i, candidate_j)
    + ``PRIOR_TIE_WEIGHT`` x prior cosine of candidate j. An empty indication gives the prior order."""
    vectorizer = fit_tfidf(train_texts)
    prior = _prior(vectorizer, train_texts, candidate_texts)
    cand = vectorizer.transform(list(candidate_texts))
    queries = vectorizer.transform([str(t or "") for t in query_indications])
    cosine = np.asarray((queries @ cand.T).todense())
    return (cosine + PRIOR_TIE_WEIGHT * prior[None, :]).astype(np.float32)


def train_report_texts(pairs: pd.DataFrame) -> list[str]:
    """Texts of the unique training reports (one per ``report_id``, in pair_id order)."""
    train = sort_pairs(pairs[pairs["split"] == "train"]).drop_duplicates("report_id")
    return train["text"].astype(str).tolist()


def query_indications(pairs_split: pd.DataFrame, reports: pd.DataFrame) -> list[str]:
    """INDICATION text of each query pair (pair_id order); "" when the report has none."""
    by_report = reports.drop_duplicates("report_id").set_index("report_id")["indication"]
    ordered = sort_pairs(pairs_split)
    return [str(x) if isinstance(x, str) else "" for x in ordered["report_id"].map(by_report)]


def score_baseline(
    method: str, pairs: pd.DataFrame, reports: pd.DataFrame, split: str, seed: int
) -> dict[str, np.ndarray]:
    """Scores of baseline ``method`` on the pairs of ``split``: the ``scores.npz`` dict.

    ``pairs``: the whole pairs table (training reports fit TF-IDF); ``reports``: reports table (for
    ``indication``); ``seed``: used by ``random`` only.
    """
    if method not in METHODS:
        raise CxrclipError(f"unknown baseline '{method}'; choose one of {list(METHODS)}")
    pairs_split = pairs[pairs["split"] == split]
    if pairs_split.empty:
        raise CxrclipError(f"no pairs in split '{split}' (check eval.split and the pairs table)")
    candidates = build_candidates(pairs_split)
    n_queries = len(candidates.pair_ids)
    if method == "random":
        scores = random_scores(n_queries, candidates.n_candidates, seed)
    else:
        train_texts = train_report_texts(pairs)
        if not train_texts:
            raise CxrclipError(
                f"baseline '{method}' needs training reports; the pairs table has none"
            )
        if method == "tfidf_prior":
            scores = tfidf_prior_scores(train_texts, candidates.texts, n_queries)
        else:
            indications = query_indications(pairs_split, reports)
            scores = tfidf_indication_scores(train_texts, indications, candidates.texts)
    return scores_dict(scores, candidates)
