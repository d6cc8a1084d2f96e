"""``cxrclip build-splits``: image-report pairs with grouped, stratified, seeded train/val/test splits."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from cxrclip.data.io import write_parquet
from cxrclip.data.splits import (
    build_pairs,
    check_no_leak,
    cross_split_duplicate_texts,
    split_summary,
)
from cxrclip.errors import CxrclipError

COMMAND = "build-splits"
HELP = "Pair every verified image with its report and split by report (stratified, seeded, leak-checked)."
PARAMS = ["seed", "splits"]

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reports", default="data/interim/reports.parquet")
    parser.add_argument("--images", default="data/interim/images.parquet")
    parser.add_argument("--out", default="data/processed/pairs.parquet")
    parser.add_argument("--exclusions-out", default="data/processed/pair_exclusions.parquet")


def _read(path: str, what: str, stage: str) -> pd.DataFrame:
    if not Path(path).is_file():
        raise CxrclipError(f"{path}: {what} not found (run `cxrclip {stage}` first)")
    return pd.read_parquet(path)


def run(args: argparse.Namespace, params: dict[str, Any]) -> None:
    reports = _read(args.reports, "reports table", "parse-reports")
    images = _read(args.images, "images table", "verify-images")
    pairs, exclusions = build_pairs(reports, images, params["splits"]["fractions"], params["seed"])
    check_no_leak(pairs)
    write_parquet(pairs, args.out)
    write_parquet(exclusions, args.exclusions_out)
    log.info("splits:\n%s\n%d texts occur in more than one split (different reports, same wording)",
             split_summary(pairs).to_string(), cross_split_duplicate_texts(pairs))
