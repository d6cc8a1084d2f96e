"""Image-report pairs and leak-free splits (cxrclip.data.splits, `cxrclip build-splits`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrclip.cli import main as cli_main
from cxrclip.data.splits import (
    PAIR_COLUMNS,
    assign_splits,
    build_pairs,
    check_no_leak,
    cross_split_duplicate_texts,
    natural_key,
    split_summary,
)
from cxrclip.errors import CxrclipError

FRACTIONS = [0.8, 0.1, 0.1]


def make_tables(n_reports: int = 200, normal_every: int = 3, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reports with 1-3 images each (every third normal) and an images table where all are ok."""
    rng = np.random.default_rng(seed)
    report_rows, image_rows = [], []
    for r in range(1, n_reports + 1):
        ids = [f"CXR{r}_IM-{r:04d}-{k}001" for k in range(1, int(rng.integers(1, 4)) + 1)]
        report_rows.append({"report_id": f"CXR{r}", "image_ids": ids, "is_normal": r % normal_every == 0,
                            "text": "No acute disease." if r % normal_every == 0 else f"Finding {r % 17}."})
        for image_id in ids:
            image_rows.append({"image_id": image_id, "ok": True, "cache_index": len(image_rows),
                               "view": "unknown"})
    return pd.DataFrame(report_rows), pd.DataFrame(image_rows)


def test_every_report_and_image_is_in_exactly_one_split():
    reports, images = make_tables()
    pairs, exclusions = build_pairs(reports, images, FRACTIONS, seed=1)
    assert pairs.groupby("report_id")["split"].nunique().max() == 1
    assert pairs["image_id"].is_unique
    assert len(pairs) == len(images) and exclusions.empty
    assert list(pairs["pair_id"]) == list(range(len(pairs)))
    assert list(pairs.columns) == list(PAIR_COLUMNS)
    check_no_leak(pairs)


def test_split_sizes_follow_the_fractions_within_rounding_overall_and_per_stratum():
    reports, images = make_tables(n_reports=301)
    pairs, _ = build_pairs(reports, images, FRACTIONS, seed=7)
    summary = split_summary(pairs)
    for column, tolerance in (("reports", 1.0), ("normal_reports", 1.5), ("abnormal_reports", 1.5)):
        n = summary[column].sum()
        for split, fraction in zip(("train", "val", "test"), FRACTIONS, strict=True):
            assert abs(summary.loc[split, column] - fraction * n) <= tolerance, (column, split)


def test_stratification_keeps_the_normal_share_equal_across_splits():
    reports, images = make_tables(n_reports=400, normal_every=4)
    pairs, _ = build_pairs(reports, images, FRACTIONS, seed=3)
    share = split_summary(pairs).eval("normal_reports / reports")
    assert share.max() - share.min() < 0.03  # 25% normal everywhere (a random split: about +-7%)


def test_same_seed_same_splits_regardless_of_row_order_and_other_seed_differs():
    reports, images = make_tables()
    first, _ = build_pairs(reports, images, FRACTIONS, seed=5)
    shuffled, _ = build_pairs(reports.sample(frac=1, random_state=1), images.sample(frac=1, random_state=2),
                              FRACTIONS, seed=5)
    pd.testing.assert_frame_equal(first, shuffled)
    other, _ = build_pairs(reports, images, FRACTIONS, seed=6)
    assert not first["split"].equals(other["split"])


def test_reports_without_a_valid_image_are_excluded():
    reports, images = make_tables(n_reports=10)
    bad_ids = set(reports.loc[reports["report_id"] == "CXR4", "image_ids"].iloc[0])
    images.loc[images["image_id"].isin(bad_ids), ["ok", "cache_index"]] = [False, -1]
    pairs, exclusions = build_pairs(reports, images, FRACTIONS, seed=0)
    assert "CXR4" not in set(pairs["report_id"])
    assert exclusions[["report_id", "reason"]].values.tolist() == [["CXR4", "no_valid_image"]]


def test_an_image_claimed_by_two_reports_is_excluded_for_both():
    reports, images = make_tables(n_reports=5)
    stolen = reports.loc[0, "image_ids"][0]
    reports.at[1, "image_ids"] = [*reports.loc[1, "image_ids"], stolen]
    pairs, exclusions = build_pairs(reports, images, FRACTIONS, seed=0)
    assert stolen not in set(pairs["image_id"])
    shared = exclusions[exclusions["reason"] == "image_in_several_reports"]
    assert sorted(shared["report_id"]) == ["CXR1", "CXR2"] and set(shared["image_id"]) == {stolen}


def test_leak_check_names_ids_found_in_two_splits():
    reports, images = make_tables(n_reports=30)
    pairs, _ = build_pairs(reports, images, FRACTIONS, seed=0)
    multi = pairs.groupby("report_id").filter(lambda g: len(g) > 1)["report_id"].iloc[0]
    rows = pairs.index[pairs["report_id"] == multi]
    leaked = pairs.copy()
    leaked.loc[rows[0], "split"] = "test" if leaked.loc[rows[1], "split"] != "test" else "train"
    with pytest.raises(CxrclipError, match=f"report_id.*{multi}"):
        check_no_leak(leaked)


def test_bad_fractions_are_a_clear_error():
    reports, images = make_tables(n_reports=5)
    with pytest.raises(CxrclipError, match="summing to 1"):
        build_pairs(reports, images, [0.8, 0.1, 0.2], seed=0)


def test_zero_fraction_split_stays_empty():
    split_of = assign_splits([f"CXR{i}" for i in range(50)], [i % 2 == 0 for i in range(50)], [0.9, 0.1, 0.0], 0)
    assert "test" not in split_of.values() and list(split_of.values()).count("val") == 5


def test_identical_texts_across_splits_are_counted_not_refused():
    reports, images = make_tables(n_reports=60)
    pairs, _ = build_pairs(reports, images, FRACTIONS, seed=0)
    check_no_leak(pairs)  # "No acute disease." sits in every split: allowed
    assert cross_split_duplicate_texts(pairs) >= 1


def test_natural_key_orders_numbers_numerically():
    assert sorted(["CXR10", "CXR9", "CXR100"], key=natural_key) == ["CXR9", "CXR10", "CXR100"]


def test_cli_writes_pairs_and_exclusions(tmp_path):
    reports, images = make_tables(n_reports=40)
    images.loc[0, "ok"] = False
    reports.to_parquet(tmp_path / "reports.parquet")
    images.to_parquet(tmp_path / "images.parquet")
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    code = cli_main(["build-splits", "--params", str(params), "--reports", str(tmp_path / "reports.parquet"),
                     "--images", str(tmp_path / "images.parquet"), "--out", str(tmp_path / "pairs.parquet"),
                     "--exclusions-out", str(tmp_path / "excl.parquet")])
    assert code == 0
    pairs = pd.read_parquet(tmp_path / "pairs.parquet")
    assert len(pairs) == len(images) - 1 and set(pairs["split"]) == {"train", "val", "test"}
    assert pd.read_parquet(tmp_path / "excl.parquet").shape[1] == 4
