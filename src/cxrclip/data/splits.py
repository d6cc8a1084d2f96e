"""Image-report pairs and leak-free train/val/test splits.

Splits are drawn over reports (all images of one report land in the same split), separately within
the normal and the abnormal reports (stratified), from a seeded shuffle of the sorted report ids:
the same inputs and seed always give the same splits, whatever the row order of the tables.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import pandas as pd

from cxrclip.errors import CxrclipError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
NO_VALID_IMAGE = "no_valid_image"
SHARED_IMAGE = "image_in_several_reports"  # extension: one image id claimed by 2+ reports

PAIR_COLUMNS = {"pair_id": "int64", "image_id": "str", "report_id": "str", "cache_index": "int64",
                "view": "str", "split": "str", "is_normal": "bool", "text": "str"}
#: ``pair_exclusions.parquet`` (not fixed by the contract; mirrors the other exclusion tables).
PAIR_EXCLUSION_COLUMNS = {"report_id": "str", "image_id": "object", "reason": "str", "detail": "str"}


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key that orders embedded numbers numerically: ``CXR2`` < ``CXR10``."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text))


def validate_fractions(fractions: list[float] | tuple[float, ...]) -> tuple[float, float, float]:
    """Three non-negative fractions (train, val, test) summing to 1 (within 1e-6)."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or any(f < 0 for f in values) or abs(sum(values) - 1.0) > 1e-6:
        raise CxrclipError(f"splits.fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    return values  # type: ignore[return-value]


def assign_splits(report_ids: list[str], is_normal: list[bool], fractions: list[float], seed: int,
                  ) -> dict[str, str]:
    """``report_id -> split``, stratified by ``is_normal``, deterministic in ``seed``.

    Each stratum's ids are sorted, then shuffled with ``numpy.random.default_rng([seed, stratum])``;
    the strata are interleaved in proportion (the k-th of n reports sits at ``(k + 0.5) / n``) and
    the merged list is cut at ``round(cumsum(fractions) * N)``. Overall split sizes are thus exact
    up to rounding, and each stratum's within about one report of its fractions.
    """
    train, val, _ = validate_fractions(fractions)
    strata: dict[bool, list[str]] = {False: [], True: []}
    for report_id, normal in zip(report_ids, is_normal, strict=True):
        strata[bool(normal)].append(report_id)
    ranked: list[tuple[float, int, str]] = []
    for stratum, ids in strata.items():
        ids = sorted(ids, key=natural_key)
        order = np.random.default_rng([seed, int(stratum)]).permutation(len(ids))
        ranked += [((rank + 0.5) / len(ids), int(stratum), ids[index]) for rank, index in enumerate(order)]
    ranked.sort()
    cut_train, cut_val = round(train * len(ranked)), round((train + val) * len(ranked))
    return {report_id: SPLITS[0] if k < cut_train else SPLITS[1] if k < cut_val else SPLITS[2]
            for k, (_, _, report_id) in enumerate(ranked)}


def build_pairs(reports: pd.DataFrame, images: pd.DataFrame, fractions: list[float], seed: int,
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per (usable image, its report), with the report's split.

    ``reports``: reports.parquet (``report_id``, ``image_ids``, ``is_normal``, ``text``);
    ``images``: images.parquet (``image_id``, ``ok``, ``cache_index``, ``view``). An image id
    named by several reports is excluded for all of them (``image_in_several_reports``); a report
    left without any usable image is excluded (``no_valid_image``). Returns ``(pairs, exclusions)``;
    pairs are ordered by natural report id, then the report's image order; ``pair_id`` = row.
    """
    needed = {"report_id", "image_ids", "is_normal", "text"} - set(reports.columns)
    if needed:
        raise CxrclipError(f"reports table lacks column(s) {sorted(needed)}")
    needed = {"image_id", "ok", "cache_index", "view"} - set(images.columns)
    if needed:
        raise CxrclipError(f"images table lacks column(s) {sorted(needed)}")
    if not reports["report_id"].is_unique:
        raise CxrclipError("reports table has duplicate report_id values")
    validate_fractions(fractions)

    claims = reports[["report_id", "image_ids"]].explode("image_ids").dropna(subset=["image_ids"])
    claims = claims.rename(columns={"image_ids": "image_id"}).drop_duplicates()
    n_claims = claims.groupby("image_id")["report_id"].transform("nunique")
    shared = claims[n_claims > 1]
    ok_images = images[images["ok"].astype(bool)].drop_duplicates("image_id")
    usable = claims[n_claims == 1].merge(ok_images[["image_id", "cache_index", "view"]], on="image_id")

    exclusions = [{"report_id": r, "image_id": i, "reason": SHARED_IMAGE,
                   "detail": "image id also named by another report"}
                  for r, i in zip(shared["report_id"], shared["image_id"], strict=True)]
    with_image = set(usable["report_id"])
    kept = reports[reports["report_id"].isin(with_image)]
    for report_id in reports.loc[~reports["report_id"].isin(with_image), "report_id"]:
        exclusions.append({"report_id": report_id, "image_id": None, "reason": NO_VALID_IMAGE,
                           "detail": "none of the report's images passed verification"})

    split_of = assign_splits(list(kept["report_id"]), list(kept["is_normal"]), fractions, seed)
    pairs = usable.merge(kept[["report_id", "is_normal", "text"]], on="report_id")
    pairs["split"] = pairs["report_id"].map(split_of)
    position = {(r, str(i)): k for r, ids in zip(reports["report_id"], reports["image_ids"], strict=True)
                for k, i in enumerate(ids if ids is not None else [])}
    pairs["_order"] = [(natural_key(r), position[(r, i)])
                       for r, i in zip(pairs["report_id"], pairs["image_id"], strict=True)]
    pairs = pairs.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)
    pairs.insert(0, "pair_id", np.arange(len(pairs), dtype=np.int64))
    pairs = pairs[list(PAIR_COLUMNS)].astype(PAIR_COLUMNS)
    exclusions.sort(key=lambda row: (natural_key(str(row["report_id"])), row["reason"], str(row["image_id"])))
    excluded = pd.DataFrame(exclusions, columns=list(PAIR_EXCLUSION_COLUMNS)).astype(PAIR_EXCLUSION_COLUMNS)
    log.info("pairs: %d from %d reports; %d exclusions", len(pairs), len(kept), len(excluded))
    return pairs, excluded


def check_no_leak(pairs: pd.DataFrame) -> None:
    """Raise :class:`CxrclipError` naming every report or image id found in more than one split."""
    problems = []
    for column in ("report_id", "image_id"):
        n_splits = pairs.groupby(column)["split"].nunique()
        leaked = sorted(n_splits[n_splits > 1].index, key=natural_key)
        if leaked:
            shown = ", ".join(leaked[:20]) + (f" ... (+{len(leaked) - 20} more)" if len(leaked) > 20 else "")
            problems.append(f"{len(leaked)} {column}(s) in several splits: {shown}")
    if problems:
        raise CxrclipError("split leak: " + "; ".join(problems))


def cross_split_duplicate_texts(pairs: pd.DataFrame) -> int:
    """Number of distinct texts that occur in more than one split (legitimate: different patients)."""
    if pairs.empty:
        return 0
    return int((pairs.groupby("text")["split"].nunique() > 1).sum())


def split_summary(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per split: ``reports``, ``pairs``, ``normal_reports``, ``abnormal_reports`` (rows in SPLITS order)."""
    by_report = pairs.drop_duplicates("report_id")
    table = pd.DataFrame({
        "reports": by_report.groupby("split").size(),
        "pairs": pairs.groupby("split").size(),
        "normal_reports": by_report[by_report["is_normal"]].groupby("split").size(),
        "abnormal_reports": by_report[~by_report["is_normal"]].groupby("split").size(),
    })
    return table.reindex(list(SPLITS)).fillna(0).astype("int64")
