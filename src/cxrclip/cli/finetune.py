"""``cxrclip finetune``: contrastive fine-tuning of the CLIP model on the train split.

Runs as one process or under ``torchrun --nproc_per_node=N -m cxrclip finetune ...`` (DDP; gloo on
CPU, NCCL on CUDA; rank 0 validates and writes). Outputs in ``--out-dir``: ``model.safetensors``
(best weights), ``history.csv``, ``steps.csv``, ``train_metrics.json``, ``checkpoints/last.pt``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from cxrclip.errors import CxrclipError

COMMAND = "finetune"
HELP = "contrastive fine-tuning on the train split, validated each epoch (torchrun-ready)"
PARAMS = ["train", "model", "seed", "mlflow"]

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", default="data/processed/pairs.parquet", help="pairs table (with splits)")
    parser.add_argument("--reports", default="data/interim/reports.parquet", help="reports table (validation labels)")
    parser.add_argument("--cache", default="data/processed/images_224.npy", help="uint8 (N, S, S) image cache")
    parser.add_argument("--out-dir", default="models/finetuned", help="output folder")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")


def _read_reports(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise CxrclipError(f"reports table not found: {path} (run the parse-reports stage first)")
    reports = pd.read_parquet(path)
    missing = sorted({"report_id", "mesh_major"} - set(reports.columns))
    if missing:
        raise CxrclipError(f"{path} lacks column(s) {missing}")
    return reports


def run(args: argparse.Namespace, params: dict[str, Any]) -> None:
    from cxrclip.evaluation.baselines import train_report_texts
    from cxrclip.models.factory import create_clip
    from cxrclip.tracking import run_tags, tracking_uri
    from cxrclip.training.data import build_pair_set, open_cache, read_pairs
    from cxrclip.training.distributed import init_distributed, shutdown
    from cxrclip.training.loop import fit
    from cxrclip.training.recipe import recipe_from_params
    from cxrclip.training.tracking import MlflowTracker
    from cxrclip.training.validation import build_validation_set

    recipe = recipe_from_params(params["train"])
    seed = int(params["seed"])
    ctx = init_distributed(recipe.device)
    try:
        if ctx.device.type == "cpu" and ctx.is_main:
            log.warning("no GPU in use: fine-tuning on the CPU (fine for the tiny model, slow for ViT-B-32)")
        torch.manual_seed(seed)  # identical initial weights on every rank for pretrained: none
        bundle = create_clip(params["model"]["name"], params["model"]["pretrained"], device=ctx.device)
        pairs, cache = read_pairs(args.pairs), open_cache(args.cache)
        splits = {name: build_pair_set(pairs[pairs["split"] == name], cache, bundle.tokenizer) for name in ("train", "val")}
        if not len(splits["train"]):
            raise CxrclipError(f"{args.pairs} has no train pairs")
        vset = build_validation_set(splits["val"], _read_reports(args.reports), train_report_texts(pairs))
        if not len(vset) and ctx.is_main:
            log.warning("no validation pairs: the best epoch is chosen by train loss")
        tracker = None
        if ctx.is_main and not args.no_mlflow:
            mlflow_params = params.get("mlflow", {})
            tags = {**run_tags(params, [args.pairs, args.reports]), "model": bundle.name,
                    "pretrained": bundle.pretrained}
            tracker = MlflowTracker(tracking_uri(mlflow_params), str(mlflow_params.get("experiment") or "cxrclip"),
                                    run_name="finetune", tags=tags)
        result = fit(
            bundle,
            splits["train"],
            vset,
            recipe,
            args.out_dir,
            seed,
            ctx=ctx,
            tracker=tracker,
            run_params={"train": recipe.to_dict(), "model": params["model"], "seed": seed,
                        "n_train_pairs": len(splits["train"]), "n_val_pairs": len(vset)},
        )
        if ctx.is_main:
            log.info("best epoch %s (%s = %s); outputs in %s", result.best_epoch, recipe.select_metric,
                     result.best_value, args.out_dir)
    finally:
        shutdown(ctx)
