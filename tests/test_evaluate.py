"""evaluate_scores on a hand-built split with known answers; candidates; paired comparison; the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrclip.cli import main
from cxrclip.errors import CxrclipError
from cxrclip.evaluation.candidates import build_candidates, normalise, save_scores, scores_dict
from cxrclip.evaluation.evaluate import evaluate_scores, json_ready, paired_comparison

PROJECT = Path(__file__).resolve().parents[1]
CFG = {"ks": [1, 5, 10], "bootstrap": 200, "ci": 0.95, "seed": 0}
TRAIN_TEXTS = [
    "no acute disease",
    "no acute cardiopulmonary disease",
    "cardiomegaly",
    "right pleural effusion",
    "clear lungs",
    "left basilar opacity and effusion",
]

# (report_id, text, mesh_major, n_images); test split, in pair_id order (R2 duplicates R1's text)
TEST_REPORTS = [
    ("CXR1", "No acute disease.", ["normal"], 2),
    ("CXR2", "no  acute disease", ["normal"], 1),
    ("CXR3", "Cardiomegaly.", ["Cardiomegaly/mild"], 1),
    ("CXR4", "Right pleural effusion.", ["Pleural Effusion/right"], 2),
    ("CXR5", "Clear lungs.", ["normal"], 1),
    (
        "CXR6",
        "Left basilar opacity and effusion.",
        ["Opacity/lung/base", "Pleural Effusion/left"],
        1,
    ),
]


def make_split() -> tuple[pd.DataFrame, pd.DataFrame]:
    """8 test pairs (rows shuffled) over 5 unique normalised texts, plus 2 training pairs."""
    pairs, reports = [], []
    for rid, text, mesh, n_images in TEST_REPORTS:
        reports.append(
            {
                "report_id": rid,
                "indication": "",
                "mesh_major": mesh,
                "is_normal": mesh == ["normal"],
                "text": text,
            }
        )
        for v in range(n_images):
            pairs.append(
                {
                    "pair_id": len(pairs),
                    "image_id": f"{rid}_IM-{v}",
                    "report_id": rid,
                    "cache_index": len(pairs),
                    "view": "frontal",
                    "split": "test",
                    "is_normal": mesh == ["normal"],
                    "text": text,
                }
            )
    for i, text in enumerate(TRAIN_TEXTS[:2]):
        rid = f"CXR{100 + i}"
        reports.append(
            {
                "report_id": rid,
                "indication": "",
                "mesh_major": ["normal"],
                "is_normal": True,
                "text": text,
            }
        )
        pairs.append(
            {
                "pair_id": len(pairs),
                "image_id": f"{rid}_IM-0",
                "report_id": rid,
                "cache_index": len(pairs),
                "view": "frontal",
                "split": "train",
                "is_normal": True,
                "text": text,
            }
        )
    pairs_df = pd.DataFrame(pairs).sample(frac=1.0, random_state=0).reset_index(drop=True)
    return pairs_df, pd.DataFrame(reports)


def eval_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    return pairs[pairs["split"] == "test"]


def oracle_scores(pairs: pd.DataFrame, correct: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Score 1 for the true text, 0 elsewhere; queries where ``correct`` is False score a wrong text 1."""
    candidates = build_candidates(eval_pairs(pairs))
    n_q, n_c = len(candidates.pair_ids), candidates.n_candidates
    scores = np.zeros((n_q, n_c), dtype=np.float32)
    rows = np.arange(n_q)
    scores[rows, candidates.pair_text_idx] = 1.0
    if correct is not None:
        wrong = ~correct
        scores[rows[wrong], candidates.pair_text_idx[wrong]] = 0.0
        scores[rows[wrong], (candidates.pair_text_idx[wrong] + 1) % n_c] = 1.0
    return scores_dict(scores, candidates)


def evaluate(scores: dict, pairs: pd.DataFrame, reports: pd.DataFrame, cfg: dict = CFG):
    return evaluate_scores(scores, eval_pairs(pairs), reports, TRAIN_TEXTS, cfg)


# ---------------------------------------------------------------- candidates
def test_normalise_lowercases_collapses_whitespace_and_strips_trailing_punctuation():
    assert normalise("  Normal   chest x-.  ") == "normal chest x-"
    assert normalise("No acute disease.\n") == normalise("no  acute disease") == "no acute disease"
    assert normalise("Heart size normal. Lungs clear!?") == "heart size normal. lungs clear"


def test_build_candidates_dedupes_normalised_texts_in_pair_id_order():
    pairs, _ = make_split()
    candidates = build_candidates(eval_pairs(pairs))  # rows are shuffled; order must follow pair_id
    assert candidates.texts == [
        "no acute disease",
        "cardiomegaly",
        "right pleural effusion",
        "clear lungs",
        "left basilar opacity and effusion",
    ]
    assert candidates.pair_ids.tolist() == list(range(8))
    assert candidates.pair_text_idx.tolist() == [0, 0, 0, 1, 2, 2, 3, 4]
    assert candidates.pair_text_idx.dtype == np.int64


# ---------------------------------------------------------------- known answers
def test_oracle_scores_give_known_metrics_on_every_level():
    pairs, reports = make_split()
    metrics, rankings = evaluate(oracle_scores(pairs), pairs, reports)
    assert metrics["report/i2t_R@1"] == 1.0
    assert metrics["report/i2t_MRR"] == 1.0
    assert metrics["report/i2t_median_rank"] == 1.0
    assert metrics["report/t2i_R@1"] == 1.0
    # paper protocol: CXR1 (2 images) and CXR2 share a text -> 3 tied columns -> strict rank 3;
    # CXR4's two images -> rank 2; the other 3 queries rank 1
    assert rankings["paper_rank"].tolist() == [3, 3, 3, 1, 2, 2, 1, 1]
    assert metrics["paper/top1"] == pytest.approx(3 / 8)
    assert metrics["paper/top3"] == 1.0
    assert metrics["paper/top1_any"] == 1.0
    assert metrics["paper/top1_random_ties"] == pytest.approx((3 * (1 / 3) + 2 * (1 / 2) + 3) / 8)
    # labels: relevant candidates per query = normal 2 (no acute disease, clear lungs),
    # cardiomegaly 1, effusion 2 (both effusion texts), opacity+effusion 2; pool 5
    assert metrics["label/P@1"] == 1.0
    assert metrics["label/Hit@1"] == 1.0
    expected_p5 = np.mean([2, 2, 2, 1, 2, 2, 2, 2]) / 5
    assert metrics["label/P@5"] == pytest.approx(expected_p5)
    assert metrics["label/P@5_chance"] == pytest.approx(expected_p5)
    assert metrics["text/top1_tfidf_cosine"] == 1.0
    assert metrics["cosine/true_mean"] == 1.0
    assert metrics["cosine/negative_mean"] == 0.0
    assert {
        k: metrics[k]
        for k in (
            "pool/queries",
            "pool/report_candidates",
            "pool/paper_candidates",
            "pool/label_candidates",
            "pool/text_queries",
            "pool/reports",
        )
    } == {
        "pool/queries": 8.0,
        "pool/report_candidates": 5.0,
        "pool/paper_candidates": 8.0,
        "pool/label_candidates": 5.0,
        "pool/text_queries": 5.0,
        "pool/reports": 6.0,
    }


def test_constant_scores_get_the_worst_rank_under_the_tie_rule():
    pairs, reports = make_split()
    scores = oracle_scores(pairs)
    scores["scores"][:] = 0.25
    metrics, rankings = evaluate(scores, pairs, reports)
    assert rankings["true_rank"].tolist() == [5] * 8
    assert metrics["report/i2t_R@1"] == 0.0
    assert metrics["paper/top1"] == 0.0
    assert metrics["label/Hit@1"] == 0.0
    assert metrics["report/t2i_mean_rank"] == pytest.approx(
        np.mean([1 + 8 - 3, 1 + 8 - 1, 1 + 8 - 2, 1 + 8 - 1, 1 + 8 - 1])
    )
    assert metrics["paper/top1_random_ties"] == pytest.approx(1 / 8)


def test_normal_and_abnormal_subsets_restrict_queries_not_candidates():
    pairs, reports = make_split()
    normal = np.array([True, True, True, False, False, False, True, False])  # pair_id order
    metrics, _ = evaluate(oracle_scores(pairs, correct=normal), pairs, reports)
    assert metrics["normal/report/i2t_R@1"] == 1.0
    assert metrics["abnormal/report/i2t_R@1"] == 0.0
    assert metrics["report/i2t_R@1"] == 0.5
    assert metrics["normal/pool/queries"] == 4.0 and metrics["abnormal/pool/queries"] == 4.0
    assert metrics["normal/report/i2t_R@1_chance"] == pytest.approx(
        1 / 5
    )  # pool stays 5 candidates
    assert (
        metrics["normal/report/i2t_R@1_ci_low"] == metrics["normal/report/i2t_R@1_ci_high"] == 1.0
    )


def test_metric_key_set_is_identical_for_every_method_and_holds_the_documented_keys():
    pairs, reports = make_split()
    oracle = oracle_scores(pairs)
    rng = np.random.default_rng(0)
    noisy = dict(oracle, scores=rng.random(oracle["scores"].shape).astype(np.float32))
    keys_a = set(evaluate(oracle, pairs, reports)[0])
    keys_b = set(evaluate(noisy, pairs, reports)[0])
    assert keys_a == keys_b
    documented = {
        "paper/top1",
        "paper/top3",
        "report/i2t_R@1",
        "report/i2t_R@5",
        "report/i2t_R@10",
        "report/i2t_MRR",
        "report/i2t_median_rank",
        "report/i2t_mean_rank",
        "report/t2i_R@5",
        "label/P@5",
        "label/P@5_chance",
        "label/Hit@5",
        "label/Hit@5_chance",
        "text/top1_tfidf_cosine",
        "cosine/true_mean",
        "cosine/top1_mean",
        "cosine/negative_mean",
        "report/i2t_R@5_ci_low",
        "report/i2t_R@5_ci_high",
        "normal/report/i2t_R@5",
        "abnormal/label/P@5_ci_high",
        "pool/report_candidates",
        "pool/paper_candidates",
        "pool/queries",
        "pool/label_candidates",
    }
    assert documented <= keys_a
    assert "label/P@5_chance_ci_low" not in keys_a and "pool/queries_ci_low" not in keys_a


def test_split_without_normal_queries_keeps_the_key_set_with_nan_values():
    pairs, reports = make_split()
    full_keys = set(evaluate(oracle_scores(pairs), pairs, reports)[0])
    abnormal_only = pairs[~pairs["is_normal"] | (pairs["split"] != "test")]
    metrics, _ = evaluate(oracle_scores(abnormal_only), abnormal_only, reports)
    assert set(metrics) == full_keys
    assert metrics["normal/pool/queries"] == 0.0
    assert np.isnan(metrics["normal/report/i2t_R@1"]) and np.isnan(
        metrics["normal/report/i2t_R@1_ci_low"]
    )
    assert json_ready(metrics)["normal/report/i2t_R@1"] is None
    assert metrics["abnormal/report/i2t_R@1"] == 1.0


def test_bootstrap_intervals_contain_the_point_estimate_and_are_seeded():
    pairs, reports = make_split()
    rng = np.random.default_rng(1)
    scores = oracle_scores(pairs)
    scores["scores"] = (scores["scores"] + rng.random(scores["scores"].shape)).astype(np.float32)
    first, _ = evaluate(scores, pairs, reports)
    again, _ = evaluate(scores, pairs, reports)
    other, _ = evaluate(scores, pairs, reports, dict(CFG, seed=1))
    assert first == again
    lows = [k for k in first if k.endswith("_ci_low")]
    assert any(first[k] != other[k] for k in lows)
    for low in lows:
        key = low[: -len("_ci_low")]
        if np.isfinite(first[key]):
            assert first[low] - 1e-12 <= first[key] <= first[key + "_ci_high"] + 1e-12, key


def test_rankings_hold_one_row_per_query_with_top_lists_and_per_query_metrics():
    pairs, reports = make_split()
    _, rankings = evaluate(oracle_scores(pairs), pairs, reports)
    assert rankings["pair_id"].tolist() == list(range(8))
    assert rankings["report_id"].tolist() == [
        "CXR1",
        "CXR1",
        "CXR2",
        "CXR3",
        "CXR4",
        "CXR4",
        "CXR5",
        "CXR6",
    ]
    assert [row[0] for row in rankings["top10_idx"]] == [0, 0, 0, 1, 2, 2, 3, 4]
    assert all(len(row) == 5 for row in rankings["top10_idx"])  # capped at the pool size
    assert rankings["top_texts"].iloc[3][0] == "cardiomegaly"
    for column in ("hit1_paper", "hit1_report", "rr_report", "hit5_label", "p5_label", "true_rank"):
        assert column in rankings


def test_stale_scores_from_another_split_raise_a_user_error():
    pairs, reports = make_split()
    scores = oracle_scores(pairs)
    scores["pair_ids"] = scores["pair_ids"] + 100
    with pytest.raises(CxrclipError, match="stale scores.npz"):
        evaluate(scores, pairs, reports)


# ---------------------------------------------------------------- paired comparison
def test_paired_comparison_of_oracle_against_worse_method():
    rng = np.random.default_rng(0)
    n = 300
    report_ids = [f"CXR{i // 2}" for i in range(n)]
    a = {"hit1_report": np.ones(n), "rr_report": np.ones(n)}
    b = {"hit1_report": (rng.random(n) < 0.2).astype(float), "rr_report": rng.random(n)}
    out = paired_comparison(a, b, report_ids, n_boot=500, seed=0)
    assert out["hit1_report/diff"] == pytest.approx(1 - b["hit1_report"].mean())
    assert (
        0
        < out["hit1_report/diff_ci_low"]
        < out["hit1_report/diff"]
        < out["hit1_report/diff_ci_high"]
    )
    assert out["mcnemar/c"] == 0.0 and out["mcnemar/p_exact"] < 1e-10
    same = paired_comparison(a, a, report_ids, n_boot=100, seed=0)
    assert same["hit1_report/diff"] == 0.0 and same["mcnemar/p_exact"] == 1.0


def test_paired_comparison_rejects_misaligned_rankings():
    a = pd.DataFrame({"pair_id": [0, 1], "hit1_report": [1.0, 0.0]})
    b = pd.DataFrame({"pair_id": [1, 0], "hit1_report": [1.0, 0.0]})
    with pytest.raises(CxrclipError, match="same queries"):
        paired_comparison(a, b, ["A", "B"], n_boot=10, seed=0)


# ---------------------------------------------------------------- CLI
def write_inputs(root: Path) -> None:
    pairs, reports = make_split()
    (root / "data" / "processed").mkdir(parents=True)
    (root / "data" / "interim").mkdir(parents=True)
    pairs.to_parquet(root / "data/processed/pairs.parquet", index=False)
    reports.to_parquet(root / "data/interim/reports.parquet", index=False)
    save_scores(root / "results/oracle/scores.npz", oracle_scores(pairs))
    shutil.copy(PROJECT / "params.yaml", root / "params.yaml")


def test_cli_evaluate_writes_strict_json_metrics_and_rankings(tmp_path, monkeypatch):
    write_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--method", "oracle", "--no-mlflow"]) == 0
    metrics = json.loads(
        Path("results/oracle/metrics.json").read_text(), parse_constant=pytest.fail
    )
    assert metrics["report/i2t_R@1"] == 1.0 and metrics["pool/queries"] == 8
    rankings = pd.read_parquet("results/oracle/rankings.parquet")
    assert len(rankings) == 8 and list(rankings["top10_idx"].iloc[0]) == [0, 1, 2, 3, 4]
    assert not (tmp_path / "mlflow.db").exists()


def test_cli_evaluate_reports_missing_scores_without_traceback(tmp_path, monkeypatch, capsys):
    write_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--method", "zeroshot", "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "scores file not found: results/zeroshot/scores.npz" in err and "Traceback" not in err
