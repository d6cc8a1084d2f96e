"""``cxrclip verify-images``: decode every image once, exclude bad ones, write the 224 px cache."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd

from cxrclip.data.images import image_id_from_name, verify_and_cache
from cxrclip.data.io import write_parquet
from cxrclip.data.kaggle import PROJECTIONS_CSV, kaggle_image_id, kaggle_views
from cxrclip.errors import CxrclipError

COMMAND = "verify-images"
HELP = "Verify every image (full decode), record exclusions and write the square grayscale cache."
PARAMS = ["images", "source.kind", "source.kaggle_dir"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--archive", default="data/raw/NLMCXR_png.tgz",
                        help="Open-i PNG archive (.tgz) or folder; with source.kind=kaggle the images "
                             "are read from <source.kaggle_dir>/images instead")
    parser.add_argument("--reports", default="data/interim/reports.parquet")
    parser.add_argument("--out", default="data/interim/images.parquet")
    parser.add_argument("--exclusions-out", default="data/interim/image_exclusions.parquet")
    parser.add_argument("--cache", default="data/processed/images_224.npy",
                        help="uint8 (N, S, S) cache; its JSON is written beside it")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _read_reports(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise CxrclipError(f"{path}: reports table not found (run `cxrclip parse-reports` first)")
    return pd.read_parquet(path, columns=["report_id", "image_ids"])


def run(args: argparse.Namespace, params: dict[str, Any]) -> None:
    images_cfg = params["images"]
    kind = params["source"]["kind"]
    if kind == "kaggle":
        kaggle_dir = Path(params["source"]["kaggle_dir"])
        source, id_from_name = kaggle_dir / "images", kaggle_image_id
        views = kaggle_views(kaggle_dir / PROJECTIONS_CSV)[["image_id", "view"]]
    else:
        source, id_from_name, views = Path(args.archive), image_id_from_name, None
    if not source.exists():
        raise CxrclipError(f"{source}: image source not found")
    images, exclusions = verify_and_cache(
        source, _read_reports(Path(args.reports)), Path(args.cache),
        size=images_cfg["size"], resize=images_cfg["resize"], max_pixels=images_cfg["max_pixels"],
        workers=images_cfg["workers"], views=views, progress=not args.no_progress,
        id_from_name=id_from_name)
    write_parquet(images, args.out)
    write_parquet(exclusions, args.exclusions_out)
