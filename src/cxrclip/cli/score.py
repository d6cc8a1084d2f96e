"""``cxrclip score --method M``: image-to-report scores of the evaluated split for one method.

Baselines (``random``, ``tfidf_prior``, ``tfidf_indication``) read ``seed`` and ``eval.split`` and
ignore ``model``/``embed``; CLIP methods (``zeroshot``, ``finetuned``) read ``model``, ``embed`` and
``eval.split`` and also write the embeddings. ``PARAMS`` is the union (one list per command).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrclip.errors import CxrclipError

COMMAND = "score"
HELP = "score image-report pairs of the evaluated split with one method (baselines or CLIP)"
PARAMS = ["seed", "eval.split", "model", "embed"]

BASELINE_METHODS = ("random", "tfidf_prior", "tfidf_indication")
CLIP_METHODS = ("zeroshot", "finetuned")
METHODS = BASELINE_METHODS + CLIP_METHODS

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, choices=METHODS, help="scoring method")
    parser.add_argument("--pairs", default="data/processed/pairs.parquet", help="pairs table")
    parser.add_argument("--reports", default="data/interim/reports.parquet", help="reports table (baselines)")
    parser.add_argument("--cache", default="data/processed/images_224.npy", help="uint8 image cache (CLIP methods)")
    parser.add_argument(
        "--weights", default="models/finetuned/model.safetensors", help="fine-tuned weights (finetuned only)"
    )
    parser.add_argument("--out", default=None, help="scores.npz (default: results/METHOD/scores.npz)")
    parser.add_argument(
        "--embeddings-out",
        default=None,
        help="embeddings.npz, CLIP methods only (default: results/METHOD/embeddings.npz)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _read_parquet(path: str | Path, what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise CxrclipError(f"{what} not found: {path} (run the earlier pipeline stages first)")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise CxrclipError(f"cannot read {what} {path}: {exc}") from exc


def _open_cache(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise CxrclipError(f"image cache not found: {path} (run the verify-images stage first)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CxrclipError(f"cannot read image cache {path}: {exc}") from exc


def split_pairs(pairs: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of ``pairs`` in ``split``, ordered by ``pair_id`` (the query order)."""
    if "split" not in pairs.columns:
        raise CxrclipError("pairs table lacks column 'split'")
    chosen = pairs[pairs["split"] == split]
    if chosen.empty:
        raise CxrclipError(f"no pairs in split '{split}' (eval.split); splits present: {sorted(pairs['split'].unique())}")
    return chosen.sort_values("pair_id", kind="stable").reset_index(drop=True)


def _with_info(data: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``data`` with its JSON ``info`` string extended by ``extra``."""
    info = json.loads(str(data["info"])) if "info" in data else {}
    return {**data, "info": np.asarray(json.dumps({**info, **extra}, sort_keys=True, default=str))}


def _write_scores(path: str | Path, data: dict[str, Any]) -> None:
    """The contract keys (validated) plus the JSON ``info`` string."""
    from cxrclip.evaluation.candidates import SCORE_KEYS, validate_scores
    from cxrclip.evaluation.embed import save_npz

    validate_scores(data)
    dtypes = {"scores": np.float32, "pair_ids": np.int64, "candidate_texts": str, "pair_text_idx": np.int64}
    arrays = {key: np.asarray(data[key], dtype=dtypes[key]) for key in SCORE_KEYS}
    save_npz(path, {**arrays, "info": np.asarray(str(data["info"]))})


def run(args: argparse.Namespace, params: dict[str, Any]) -> None:
    method = args.method
    split = params["eval"]["split"]
    out = Path(args.out or f"results/{method}/scores.npz")
    pairs = _read_parquet(args.pairs, "pairs table")
    started = time.perf_counter()
    if method in BASELINE_METHODS:
        from cxrclip.evaluation.baselines import score_baseline

        reports = _read_parquet(args.reports, "reports table")
        scores = score_baseline(method, pairs, reports, split, params["seed"])
        scores = _with_info(scores, {"method": method, "split": split, "seed": params["seed"]})
        if args.embeddings_out:
            log.warning("--embeddings-out is ignored for the baseline method %s", method)
    else:
        from cxrclip.evaluation.embed import save_npz, score_clip
        from cxrclip.models.factory import create_clip, load_finetuned

        model, embed = params["model"], params["embed"]
        chosen = split_pairs(pairs, split)
        cache = _open_cache(args.cache)
        if method == "zeroshot":
            bundle = create_clip(model["name"], model["pretrained"], embed["device"])
        else:
            bundle = load_finetuned(create_clip(model["name"], "none", embed["device"]), args.weights)
        scores, embeddings = score_clip(
            bundle, chosen, cache, embed["batch_size"], embed["device"], progress=not args.no_progress
        )
        extra = {"method": method, "split": split}
        scores = _with_info(scores, extra)
        save_npz(args.embeddings_out or f"results/{method}/embeddings.npz", _with_info(embeddings, extra))
    _write_scores(out, scores)
    n_queries, n_candidates = np.asarray(scores["scores"]).shape
    log.info(
        "%s on %s: %d queries x %d candidates -> %s (%.1f s)",
        method, split, n_queries, n_candidates, out, time.perf_counter() - started,
    )
