"""``cxrclip evaluate --method M``: metrics JSON, rankings and one MLflow run for a method's scores."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from cxrclip.data.io import write_json, write_parquet
from cxrclip.errors import CxrclipError

COMMAND = "evaluate"
HELP = "Score retrieval metrics (paper, report, label level, bootstrap CIs) of one method; log to MLflow."
PARAMS = ["eval", "mlflow", "seed"]
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--method",
        required=True,
        help="method name (random, tfidf_prior, tfidf_indication, zeroshot, finetuned)",
    )
    parser.add_argument("--scores", type=Path, help="scores.npz (default: results/M/scores.npz)")
    parser.add_argument("--pairs", type=Path, default=Path("data/processed/pairs.parquet"))
    parser.add_argument("--reports", type=Path, default=Path("data/interim/reports.parquet"))
    parser.add_argument("--out", type=Path, help="metrics JSON (default: results/M/metrics.json)")
    parser.add_argument(
        "--rankings-out", type=Path, help="rankings Parquet (default: results/M/rankings.parquet)"
    )
    parser.add_argument("--no-mlflow", action="store_true", help="skip MLflow logging")


def _read_parquet(path: Path, what: str) -> pd.DataFrame:
    if not path.exists():
        raise CxrclipError(f"{what} not found: {path} (run the earlier pipeline stages first)")
    return pd.read_parquet(path)


def run(args: argparse.Namespace, params: dict[str, Any]) -> None:
    from cxrclip.evaluation.baselines import train_report_texts
    from cxrclip.evaluation.candidates import load_scores
    from cxrclip.evaluation.evaluate import evaluate_scores, json_ready

    method = args.method
    results = Path("results") / method
    scores_path = args.scores or results / "scores.npz"
    out = args.out or results / "metrics.json"
    rankings_out = args.rankings_out or results / "rankings.parquet"
    eval_cfg = {**params["eval"], "seed": params["seed"]}

    started = time.perf_counter()
    scores = load_scores(scores_path)
    pairs = _read_parquet(args.pairs, "pairs table")
    reports = _read_parquet(args.reports, "reports table")
    split = eval_cfg.get("split", "test")
    pairs_split = pairs[pairs["split"] == split]
    if pairs_split.empty:
        raise CxrclipError(f"no pairs in split '{split}' of {args.pairs}")
    metrics, rankings = evaluate_scores(
        scores, pairs_split, reports, train_report_texts(pairs), eval_cfg
    )
    write_json(json_ready(metrics), out)
    write_parquet(rankings, rankings_out)
    log.info(
        "%s: %d queries, %d candidates; report/i2t_R@5=%.3f paper/top1=%.3f label/P@5=%.3f (%.1f s)",
        method,
        metrics["pool/queries"],
        metrics["pool/report_candidates"],
        metrics.get("report/i2t_R@5", float("nan")),
        metrics["paper/top1"],
        metrics.get("label/P@5", float("nan")),
        time.perf_counter() - started,
    )
    if not args.no_mlflow:
        from cxrclip.tracking import log_method_run, run_tags

        tags = run_tags(params, [args.pairs, args.reports, scores_path])
        run_id = log_method_run(
            method,
            metrics,
            params,
            tags,
            [out, rankings_out],
            run_name=method,
            cfg_mlflow=params["mlflow"],
        )
        log.info("MLflow run %s (method %s)", run_id, method)
