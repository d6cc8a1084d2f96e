"""Retrieval metrics on hand-built matrices with known answers (ties included), open_clip parity,
chance formulas, bootstrap and McNemar, and the MeSH -> label mapping."""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrclip.evaluation import metrics as M
from cxrclip.evaluation.labels import LABEL_GROUPS, label_match, mesh_to_labels

torch.set_num_threads(1)
KAGGLE_REPORTS = Path("/work/shared/data/iuxray-kaggle-reports/indiana_reports.csv")


# ---------------------------------------------------------------- ranks on hand-built matrices
def test_true_ranks_on_hand_built_matrix_match_hand_computed_ranks():
    scores = np.array(
        [
            [0.9, 0.1, 0.5],  # true 0: best -> 1
            [0.2, 0.8, 0.3],  # true 2: behind 0.8 -> 2
            [0.1, 0.2, 0.3],  # true 0: last -> 3
        ]
    )
    ranks = M.true_ranks(scores, np.array([0, 2, 0]))
    assert ranks.tolist() == [1, 2, 3]
    assert M.rank_metrics(ranks, ks=(1, 2)) == {
        "R@1": pytest.approx(1 / 3),
        "R@2": pytest.approx(2 / 3),
        "MRR": pytest.approx((1 + 1 / 2 + 1 / 3) / 3),
        "mean_rank": pytest.approx(2.0),
        "median_rank": 2.0,
    }


def test_tied_true_item_ranks_after_every_equal_score():
    scores = np.array(
        [
            [0.5, 0.5, 0.5],  # all tied: true 1 ranks last -> 3
            [0.7, 0.5, 0.5],  # true 2 tied with 1, behind 0 -> 3
            [0.5, 0.5, 0.1],  # true 0 tied with 1 -> 2
            [0.4, 0.9, 0.9],  # true 1 tied with 2 at the top -> 2
        ]
    )
    assert M.true_ranks(scores, np.array([1, 2, 0, 1])).tolist() == [3, 3, 2, 2]


def test_constant_scores_give_the_worst_rank_to_every_query():
    scores = np.zeros((4, 6), dtype=np.float32)
    ranks = M.true_ranks(scores, np.array([0, 1, 2, 5]))
    assert ranks.tolist() == [6, 6, 6, 6]
    assert M.recall_at_k(ranks, 5) == 0.0


def test_positive_ranks_use_best_positive_and_break_ties_against_it():
    scores = np.array(
        [
            [0.1, 0.9, 0.3, 0.8],  # positives 0, 3: best 0.8 behind 0.9 -> 2
            [0.6, 0.6, 0.6, 0.2],  # positives 0, 1 tied with negative 2 -> 2
            [0.2, 0.3, 0.4, 0.5],  # positive 3 best -> 1
        ]
    )
    positives = np.array([[1, 0, 0, 1], [1, 1, 0, 0], [0, 0, 0, 1]], dtype=bool)
    assert M.positive_ranks(scores, positives).tolist() == [2, 2, 1]


def test_positive_ranks_reject_a_query_without_positive():
    with pytest.raises(ValueError, match="at least one positive"):
        M.positive_ranks(np.zeros((2, 3)), np.array([[1, 0, 0], [0, 0, 0]], dtype=bool))


def test_median_rank_floors_the_mean_of_the_two_middle_ranks():
    assert M.median_rank(np.array([1, 2, 5, 9])) == 3.0  # median 3.5
    assert M.median_rank(np.array([1, 4, 9])) == 4.0


# ---------------------------------------------------------------- open_clip parity
@pytest.mark.parametrize(("n", "seed"), [(31, 0), (64, 1), (100, 2)])
def test_strict_metrics_equal_open_clip_get_clip_metrics(n: int, seed: int):
    from open_clip_train.train import get_clip_metrics

    gen = torch.Generator().manual_seed(seed)
    image = torch.nn.functional.normalize(torch.randn(n, 16, generator=gen), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(n, 16, generator=gen) + 0.5 * image, dim=-1)
    reference = get_clip_metrics(image, text, torch.tensor(1.0))
    scores = (image @ text.t()).numpy()
    for row in scores:  # the comparison is only defined without ties
        assert len(np.unique(row)) == n
    truth = np.arange(n)
    ours = {
        "image_to_text": M.rank_metrics(M.true_ranks(scores, truth)),
        "text_to_image": M.rank_metrics(M.true_ranks(scores.T, truth)),
    }
    for direction, values in ours.items():
        for key in ("R@1", "R@5", "R@10", "mean_rank", "median_rank"):
            assert values[key] == pytest.approx(
                float(reference[f"{direction}_{key}"]), abs=1e-12
            ), (
                direction,
                key,
            )
    assert 0 < ours["image_to_text"]["R@10"] < 1  # a non-trivial matrix


# ---------------------------------------------------------------- paper protocol
def test_paper_protocol_duplicate_texts_tie_with_the_true_text():
    # 3 pairs; pairs 0 and 1 share text 0, pair 2 has text 1; every image scores its own text highest
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    ranks = M.paper_protocol_ranks(scores, np.array([0, 0, 1]))
    # pair 0: columns 0 and 1 hold the same text (tie) -> strict rank 2; pair 1 likewise
    assert ranks["strict"].tolist() == [2, 2, 1]
    assert ranks["any"].tolist() == [1, 1, 1]
    assert ranks["matrix"].shape == (3, 3)


def test_tie_averaged_hits_split_the_hit_among_tied_candidates():
    scores = np.array(
        [
            [0.9, 0.9, 0.9, 0.1],  # true 0 tied 3-way at the top
            [0.9, 0.5, 0.5, 0.5],  # true 1 tied 3-way behind one better candidate
            [0.1, 0.2, 0.3, 0.4],  # true 3 alone at the top
        ]
    )
    true = np.array([0, 1, 3])
    assert M.tie_averaged_hits(scores, true, 1).tolist() == pytest.approx([1 / 3, 0.0, 1.0])
    assert M.tie_averaged_hits(scores, true, 3).tolist() == pytest.approx([1.0, 2 / 3, 1.0])


# ---------------------------------------------------------------- label metrics
def test_precision_and_hit_at_k_with_ties_put_relevant_items_last():
    scores = np.array([[0.9, 0.5, 0.5, 0.1], [0.2, 0.2, 0.2, 0.2]])
    relevant = np.array([[0, 1, 0, 1], [1, 0, 0, 1]], dtype=bool)
    order = M.pessimistic_order(scores, relevant)
    assert order.tolist() == [[0, 2, 1, 3], [1, 2, 0, 3]]
    assert M.precision_at_k(order, relevant, 1).tolist() == [0.0, 0.0]
    assert M.precision_at_k(order, relevant, 3).tolist() == pytest.approx([1 / 3, 1 / 3])
    hit_ranks = M.positive_ranks(scores, relevant)
    assert hit_ranks.tolist() == [3, 3]  # the first relevant position in ``order``
    assert M.hits_at_k(hit_ranks, 2).tolist() == [0.0, 0.0]


@pytest.mark.parametrize(("n", "m", "k"), [(6, 2, 1), (6, 2, 3), (7, 3, 4), (5, 1, 5), (8, 0, 3)])
def test_chance_hit_at_k_equals_enumeration_of_all_top_k_sets(n: int, m: int, k: int):
    relevant = set(range(m))
    sets = list(itertools.combinations(range(n), k))
    expected = sum(bool(relevant & set(s)) for s in sets) / len(sets)
    assert M.chance_hit_at_k(n, np.array([m]), k)[0] == pytest.approx(expected)
    assert M.chance_precision_at_k(n, np.array([m]))[0] == pytest.approx(
        np.mean([len(relevant & set(s)) / k for s in sets])
    )


def test_chance_hit_at_k_is_one_when_negatives_cannot_fill_k():
    assert M.chance_hit_at_k(5, np.array([3]), 3)[0] == 1.0


def test_cosine_summary_means_true_top1_and_negatives():
    scores = np.array([[0.9, 0.3, 0.0], [0.2, 0.4, 0.6]])
    out = M.cosine_summary(scores, np.array([0, 1]), np.array([0, 2]))
    assert out["true"].tolist() == pytest.approx([0.9, 0.4])
    assert out["top1"].tolist() == pytest.approx([0.9, 0.6])
    assert out["negative"].tolist() == pytest.approx([0.15, 0.4])


# ---------------------------------------------------------------- bootstrap
def test_bootstrap_interval_contains_point_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    values = (rng.random(300) < 0.3).astype(float)
    clusters = np.repeat(np.arange(150), 2)
    low, high = M.bootstrap_mean_ci(values, M.bootstrap_counts(150, 500, seed=7)[:, clusters])
    assert low < values.mean() < high
    again = M.bootstrap_mean_ci(values, M.bootstrap_counts(150, 500, seed=7)[:, clusters])
    other = M.bootstrap_mean_ci(values, M.bootstrap_counts(150, 500, seed=8)[:, clusters])
    assert (low, high) == again
    assert (low, high) != other


def test_bootstrap_resamples_reports_not_images():
    # report A: 100 images, all hits; report B: 1 image, a miss. Resampling the two *reports*
    # gives means in {0, 100/101, 1}; a quarter of resamples draw B twice -> lower bound 0.
    values = np.array([1.0] * 100 + [0.0])
    clusters = np.array([0] * 100 + [1])
    low, high = M.bootstrap_mean_ci(values, M.bootstrap_counts(2, 1000, seed=0)[:, clusters])
    assert low == 0.0
    assert high == 1.0


def test_bootstrap_mask_restricts_queries():
    values = np.array([1.0, 1.0, 0.0, 0.0])
    weights = M.bootstrap_counts(4, 200, seed=1)
    low, high = M.bootstrap_mean_ci(values, weights, mask=np.array([True, True, False, False]))
    assert (low, high) == (1.0, 1.0)


def test_bootstrap_1000_resamples_of_750_queries_take_well_under_a_second():
    rng = np.random.default_rng(0)
    values = rng.random((750, 25))  # one metric group: 25 per-query metric columns
    clusters = rng.integers(0, 380, size=750)
    start = time.perf_counter()
    weights = M.bootstrap_counts(380, 1000, seed=0)[:, clusters]
    M.bootstrap_mean_ci(values, weights)
    assert time.perf_counter() - start < 0.5


# ---------------------------------------------------------------- McNemar
def test_mcnemar_on_known_table():
    # 10 queries only A hits, 2 only B hits, 30 both, 8 neither
    a = np.array([1] * 10 + [0] * 2 + [1] * 30 + [0] * 8)
    b = np.array([0] * 10 + [1] * 2 + [1] * 30 + [0] * 8)
    out = M.mcnemar(a, b)
    assert (out["b"], out["c"]) == (10.0, 2.0)
    # exact: 2 * P(X <= 2), X ~ Bin(12, 0.5) = 2 * (1 + 12 + 66) / 4096
    assert out["p_exact"] == pytest.approx(158 / 4096)
    # chi2 with continuity correction: (|10 - 2| - 1)^2 / 12; 1-dof survival = erfc(sqrt(x / 2))
    assert out["p_chi2"] == pytest.approx(math.erfc(math.sqrt(49 / 12 / 2)))


def test_mcnemar_without_discordant_pairs_has_p_one():
    hits = np.array([1, 0, 1, 1])
    assert M.mcnemar(hits, hits) == {"b": 0.0, "c": 0.0, "p_exact": 1.0, "p_chi2": 1.0}


# ---------------------------------------------------------------- labels
@pytest.mark.parametrize(
    ("mesh", "labels"),
    [
        (["normal"], {"normal"}),
        (["Cardiomegaly/borderline", "Pulmonary Artery/enlarged"], {"cardiomegaly", "other"}),
        (["Calcified Granuloma/lung/right", "Opacity/lung/base"], {"nodule_mass", "opacity"}),
        (["Lung/hyperdistention/mild"], {"emphysema"}),
        (["Lung/hypoinflation"], {"other"}),
        (["Pulmonary Disease, Chronic Obstructive"], {"emphysema"}),
        (
            ["Thoracic Vertebrae/degenerative/mild", "Osteophyte/thoracic vertebrae"],
            {"degenerative"},
        ),
        (["Thoracic Vertebrae/right"], {"other"}),
        (["Catheters, Indwelling", "Surgical Instruments/mediastinum"], {"device"}),
        (
            ["Pleural Effusion/right/small", "Pulmonary  Atelectasis/base"],
            {"effusion", "atelectasis"},
        ),
        (["Airspace Disease/lung", "Pneumonia", "Infiltrate", "Consolidation"], {"opacity"}),
        ([], set()),
    ],
)
def test_mesh_to_labels_maps_terms_and_qualifiers(mesh: list[str], labels: set[str]):
    assert mesh_to_labels(mesh) == frozenset(labels)


def test_label_match_is_true_where_label_sets_intersect():
    queries = [frozenset({"normal"}), frozenset({"opacity", "effusion"}), frozenset()]
    cands = [frozenset({"normal"}), frozenset({"effusion"}), frozenset({"device", "other"})]
    assert label_match(queries, cands).tolist() == [
        [True, False, False],
        [False, True, False],
        [False, False, False],
    ]


@pytest.mark.shared_data
def test_mesh_mapping_on_real_reports_labels_every_report_and_uses_every_group():
    if not KAGGLE_REPORTS.exists():
        pytest.skip("real IU X-ray reports not available")
    import pandas as pd

    mesh = pd.read_csv(KAGGLE_REPORTS)["MeSH"].fillna("")
    label_sets = [mesh_to_labels(m.split(";")) for m in mesh]
    used = set().union(*label_sets)
    assert used == set(LABEL_GROUPS)
    assert all(label_sets)
    normal = sum(s == {"normal"} for s in label_sets)
    assert normal == sum(m.strip().lower() == "normal" for m in mesh)
