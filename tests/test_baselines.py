"""Baselines: seeded random scores agree with analytic chance, TF-IDF prior answers the most typical
report, TF-IDF indication retrieves the report matching the indication, and the scores contract."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrclip.errors import CxrclipError
from cxrclip.evaluation.baselines import (
    random_scores,
    score_baseline,
    tfidf_indication_scores,
    tfidf_prior_scores,
    train_report_texts,
)
from cxrclip.evaluation.candidates import build_candidates, load_scores, save_scores
from cxrclip.evaluation.evaluate import evaluate_scores

FINDINGS = [
    ("normal", "no acute cardiopulmonary abnormality"),
    ("Cardiomegaly/mild", "the heart is enlarged"),
    ("Pleural Effusion/right", "small right pleural effusion"),
    ("Opacity/lung/base", "patchy basilar opacity"),
    ("Nodule/lung", "nodule in the right upper lobe"),
    ("Pulmonary Atelectasis/base", "bibasilar atelectasis"),
    ("Thoracic Vertebrae/degenerative", "degenerative changes of the thoracic spine"),
    ("Catheters, Indwelling", "right central venous catheter in place"),
]


def make_tables(
    n_reports: int, images_per_report: int = 2, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic pairs/reports tables: every report has 1-3 findings and a unique-ish text."""
    rng = np.random.default_rng(seed)
    reports, pairs = [], []
    for r in range(n_reports):
        picks = sorted(rng.choice(len(FINDINGS), size=rng.integers(1, 4), replace=False))
        if 0 in picks:
            picks = [0]
        mesh = [FINDINGS[i][0] for i in picks]
        text = ". ".join(FINDINGS[i][1] for i in picks) + f". study {r % (n_reports // 2 + 1)}."
        rid = f"CXR{r + 1}"
        split = ("train", "train", "train", "val", "test")[r % 5]
        reports.append(
            {
                "report_id": rid,
                "indication": "",
                "mesh_major": mesh,
                "is_normal": mesh == ["normal"],
                "text": text,
            }
        )
        for v in range(images_per_report):
            pairs.append(
                {
                    "pair_id": len(pairs),
                    "image_id": f"{rid}_IM-{v}",
                    "report_id": rid,
                    "cache_index": len(pairs),
                    "view": ("frontal", "lateral")[v % 2],
                    "split": split,
                    "is_normal": mesh == ["normal"],
                    "text": text,
                }
            )
    return pd.DataFrame(pairs), pd.DataFrame(reports)


def test_random_scores_are_seeded_float32_of_the_requested_shape():
    a = random_scores(5, 7, seed=3)
    assert a.dtype == np.float32 and a.shape == (5, 7)
    assert np.array_equal(a, random_scores(5, 7, seed=3))
    assert not np.array_equal(a, random_scores(5, 7, seed=4))


def test_random_baseline_metrics_agree_with_analytic_chance_within_their_intervals():
    pairs, reports = make_tables(1000, images_per_report=2, seed=1)
    test_pairs = pairs[pairs["split"] == "test"]
    assert len(test_pairs) == 400
    scores = score_baseline("random", pairs, reports, "test", seed=42)
    cfg = {"ks": [1, 5, 10], "bootstrap": 1000, "ci": 0.95, "seed": 42}
    metrics, _ = evaluate_scores(scores, test_pairs, reports, train_report_texts(pairs), cfg)
    checked = [
        (f"{group}/{name}@{k}", f"{group}/{name}@{k}_chance")
        for k in (5, 10)
        for group, name in (
            ("report", "i2t_R"),
            ("report", "t2i_R"),
            ("label", "P"),
            ("label", "Hit"),
        )
    ]
    for key, chance_key in checked:
        assert metrics[f"{key}_ci_low"] <= metrics[chance_key] <= metrics[f"{key}_ci_high"], (
            key,
            metrics[key],
            metrics[chance_key],
        )
    # the analytic values themselves: one true text among the unique candidates
    n_c = metrics["pool/report_candidates"]
    assert metrics["report/i2t_R@5_chance"] == pytest.approx(5 / n_c)


def test_random_baseline_mean_over_seeds_converges_to_chance():
    pairs, reports = make_tables(500, images_per_report=2, seed=2)
    test_pairs = pairs[pairs["split"] == "test"]
    cfg = {"ks": [5], "bootstrap": 0, "ci": 0.95, "seed": 0}
    train = train_report_texts(pairs)
    runs = [
        evaluate_scores(
            score_baseline("random", pairs, reports, "test", seed), test_pairs, reports, train, cfg
        )[0]
        for seed in range(30)
    ]
    for key in ("report/i2t_R@5", "label/P@5", "label/Hit@5"):
        values = np.array([m[key] for m in runs])
        standard_error = values.std(ddof=1) / np.sqrt(len(values))
        assert abs(values.mean() - runs[0][f"{key}_chance"]) < 4 * standard_error + 1e-9, key


def test_tfidf_prior_ranks_the_most_typical_report_first_for_every_query():
    train = ["no acute cardiopulmonary abnormality"] * 6 + [
        "no acute cardiopulmonary abnormality heart size normal",
        "small left pleural effusion",
        "right upper lobe nodule",
    ]
    candidates = [
        "right upper lobe nodule",
        "no acute cardiopulmonary abnormality",
        "small left pleural effusion",
    ]
    scores = tfidf_prior_scores(train, candidates, n_queries=4)
    assert scores.shape == (4, 3) and scores.dtype == np.float32
    assert (scores.argmax(axis=1) == 1).all()
    assert (scores == scores[0]).all()  # image-blind: every query gets the same answer


def test_tfidf_indication_picks_the_report_whose_text_matches_the_indication():
    train = [
        "right lower lobe pneumonia",
        "cardiomegaly with small effusion",
        "no acute cardiopulmonary abnormality",
        "no acute cardiopulmonary abnormality",
        "displaced rib fracture",
    ]
    candidates = [
        "displaced rib fracture",
        "right lower lobe pneumonia",
        "cardiomegaly with small effusion",
        "no acute cardiopulmonary abnormality",
    ]
    indications = [
        "fever, cough, rule out pneumonia",
        "Chest pain after fall, rib fracture?",
        "cardiomegaly",
        "",
    ]
    scores = tfidf_indication_scores(train, indications, candidates)
    assert scores.argmax(axis=1).tolist() == [1, 0, 2, 3]
    prior = tfidf_prior_scores(train, candidates, 1)[0]
    # an empty indication ranks candidates in the prior order
    assert np.argsort(-scores[3]).tolist() == np.argsort(-prior).tolist()


@pytest.mark.parametrize("method", ["random", "tfidf_prior", "tfidf_indication"])
def test_score_baseline_returns_the_scores_contract_and_round_trips(method: str, tmp_path):
    pairs, reports = make_tables(40, seed=3)
    reports.loc[::3, "indication"] = "pleural effusion"
    data = score_baseline(method, pairs, reports, "test", seed=0)
    candidates = build_candidates(pairs[pairs["split"] == "test"])
    assert data["scores"].dtype == np.float32
    assert data["scores"].shape == (len(candidates.pair_ids), candidates.n_candidates)
    assert data["candidate_texts"].tolist() == candidates.texts
    assert np.array_equal(data["pair_text_idx"], candidates.pair_text_idx)
    save_scores(tmp_path / "results" / method / "scores.npz", data)
    loaded = load_scores(tmp_path / "results" / method / "scores.npz")
    for key, value in data.items():
        assert np.array_equal(loaded[key], value), key
    assert [p.name for p in (tmp_path / "results" / method).iterdir()] == [
        "scores.npz"
    ]  # no temp file left


def test_unknown_baseline_and_empty_split_raise_user_errors():
    pairs, reports = make_tables(20)
    with pytest.raises(CxrclipError, match="unknown baseline"):
        score_baseline("oracle", pairs, reports, "test", seed=0)
    with pytest.raises(CxrclipError, match="no pairs in split 'holdout'"):
        score_baseline("random", pairs, reports, "holdout", seed=0)
