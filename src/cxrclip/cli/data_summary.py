"""``cxrclip data-summary``: counts (Markdown/CSV) and figures describing the prepared data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrclip.errors import CxrclipError
from cxrclip.reporting.data_summary import DataTables, write_data_summary

COMMAND = "data-summary"
HELP = "Write reports/data/: counts per split and exclusion reason, word counts, labels, sample images."
PARAMS: list[str] = []


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reports", default="data/interim/reports.parquet")
    parser.add_argument("--report-exclusions", default="data/interim/report_exclusions.parquet")
    parser.add_argument("--images", default="data/interim/images.parquet")
    parser.add_argument("--image-exclusions", default="data/interim/image_exclusions.parquet")
    parser.add_argument("--pairs", default="data/processed/pairs.parquet")
    parser.add_argument("--pair-exclusions", default="data/processed/pair_exclusions.parquet")
    parser.add_argument("--cache", default="data/processed/images_224.npy")
    parser.add_argument("--out-dir", default="reports/data")


def _read(path: str) -> pd.DataFrame:
    if not Path(path).is_file():
        raise CxrclipError(f"{path}: not found (run the earlier pipeline stages first)")
    return pd.read_parquet(path)


def run(args: argparse.Namespace, params: dict[str, Any]) -> None:
    tables = DataTables(
        reports=_read(args.reports), report_exclusions=_read(args.report_exclusions),
        images=_read(args.images), image_exclusions=_read(args.image_exclusions),
        pairs=_read(args.pairs), pair_exclusions=_read(args.pair_exclusions))
    if not Path(args.cache).is_file():
        raise CxrclipError(f"{args.cache}: image cache not found (run `cxrclip verify-images` first)")
    write_data_summary(tables, np.load(args.cache, mmap_mode="r"), args.out_dir)
