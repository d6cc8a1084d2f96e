"""``cxrclip render-figures``: results figures (PNG) from the training, evaluation and data artifacts."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from cxrclip.errors import CxrclipError
from cxrclip.reporting.figures import render_figures

COMMAND = "render-figures"
HELP = "Write reports/figures/*.png: training curves, methods, score distributions, t-SNE, examples, P@K per label."
#: train.batch_size: loss chance ln(batch); seed: t-SNE and example choice; eval.ci: interval label.
PARAMS = ["train.batch_size", "seed", "eval.ci"]
DEFAULT_REPORTS = Path("data/interim/reports.parquet")
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=Path("results"),
        help="folder holding <method>/{metrics.json,rankings.parquet,scores.npz,embeddings.npz}",
    )
    parser.add_argument("--history", type=Path, default=Path("models/finetuned/history.csv"))
    parser.add_argument("--steps", type=Path, default=Path("models/finetuned/steps.csv"))
    parser.add_argument("--pairs", type=Path, default=Path("data/processed/pairs.parquet"))
    parser.add_argument("--cache", type=Path, default=Path("data/processed/images_224.npy"))
    parser.add_argument(
        "--reports",
        type=Path,
        default=None,
        help=f"reports table for MeSH label groups (default: {DEFAULT_REPORTS} when present; "
        "without it labels fall back to normal/abnormal)",
    )
    parser.add_argument("--out-dir", type=Path, default=Path("reports/figures"))
    parser.add_argument(
        "--projection",
        choices=("tsne", "umap"),
        default="tsne",
        help="2-D map of image embeddings (umap needs umap-learn; default: tsne)",
    )
    parser.add_argument(
        "--examples", type=int, default=6, help="test X-rays in the retrieval panel (default: 6)"
    )


def run(args: argparse.Namespace, params: dict[str, Any]) -> None:
    reports = args.reports
    if reports is not None and not reports.exists():
        raise CxrclipError(
            f"reports table not found: {reports} (run `cxrclip parse-reports` first)"
        )
    if reports is None:
        if DEFAULT_REPORTS.exists():
            reports = DEFAULT_REPORTS
        else:
            log.warning(
                "%s not found: labels of the examples and of P@K fall back to normal/abnormal",
                DEFAULT_REPORTS,
            )
    if args.examples < 1:
        raise CxrclipError("--examples must be at least 1")
    written = render_figures(
        args.results_dir,
        args.history,
        args.steps,
        args.pairs,
        args.cache,
        args.out_dir,
        batch_size=int(params["train"]["batch_size"]),
        reports_path=reports,
        projection=args.projection,
        seed=int(params["seed"]),
        n_examples=args.examples,
        ci=float(params["eval"]["ci"]),
    )
    log.info("wrote %d figures to %s", len(written), args.out_dir)
