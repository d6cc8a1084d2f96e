"""``cxrclip parse-reports``: Open-i XML (or the Kaggle CSVs) -> reports table + exclusions."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cxrclip.data.io import write_parquet
from cxrclip.data.kaggle import parse_kaggle_dir
from cxrclip.data.reports import log_counts, parse_openi_archive

COMMAND = "parse-reports"
HELP = "Parse the reports (Open-i XML archive, or Kaggle CSVs) into cleaned CLIP texts with exclusions."
PARAMS = ["source.kind", "source.kaggle_dir", "text"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--archive", default="data/raw/NLMCXR_reports.tgz",
                        help="Open-i report archive (.tgz) or folder of XML files (source.kind=openi)")
    parser.add_argument("--out", default="data/interim/reports.parquet")
    parser.add_argument("--exclusions-out", default="data/interim/report_exclusions.parquet")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace, params: dict[str, Any]) -> None:
    text_cfg = params["text"]
    if params["source"]["kind"] == "kaggle":
        reports, exclusions = parse_kaggle_dir(params["source"]["kaggle_dir"], text_cfg)
    else:
        reports, exclusions = parse_openi_archive(Path(args.archive), text_cfg, progress=not args.no_progress)
    log_counts(reports, exclusions)
    write_parquet(reports, args.out)
    write_parquet(exclusions, args.exclusions_out)
