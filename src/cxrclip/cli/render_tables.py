"""``cxrclip render-tables``: results tables (Markdown, CSV, optional HTML) from the evaluation artifacts."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from cxrclip.reporting.tables import build_tables, write_tables

COMMAND = "render-tables"
HELP = "Write reports/metrics.md + .csv: every method with intervals, normal/abnormal, paired test, study vs. us."
#: eval.bootstrap/eval.ci/seed: the paired comparison's bootstrap; train.batch_size: loss chance ln(batch).
PARAMS = ["eval.bootstrap", "eval.ci", "seed", "train.batch_size"]
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=Path("results"),
        help="folder holding <method>/metrics.json and rankings.parquet (default: results)",
    )
    parser.add_argument(
        "--history",
        type=Path,
        default=Path("models/finetuned/history.csv"),
        help="per-epoch training history (default: models/finetuned/history.csv)",
    )
    parser.add_argument("--out-md", type=Path, default=Path("reports/metrics.md"))
    parser.add_argument("--out-csv", type=Path, default=Path("reports/metrics.csv"))
    parser.add_argument(
        "--out-html",
        type=Path,
        default=None,
        help="also write the tables as a self-contained HTML page (e.g. reports/metrics.html)",
    )


def run(args: argparse.Namespace, params: dict[str, Any]) -> None:
    tables = build_tables(
        args.results_dir,
        args.history,
        batch_size=int(params["train"]["batch_size"]),
        n_boot=int(params["eval"]["bootstrap"]),
        seed=int(params["seed"]),
        ci=float(params["eval"]["ci"]),
    )
    write_tables(tables, args.out_md, args.out_csv, args.out_html)
    written = [args.out_md, args.out_csv, *([args.out_html] if args.out_html else [])]
    log.info("wrote %d tables to %s", len(tables), ", ".join(map(str, written)))
