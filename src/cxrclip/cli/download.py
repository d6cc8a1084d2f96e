"""``cxrclip download``: fetch the Open-i report and image archives (resume, retries, sha256 record)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from cxrclip.data.download import fetch
from cxrclip.data.io import write_json
from cxrclip.errors import CxrclipError

COMMAND = "download"
HELP = "Fetch NLMCXR_reports.tgz and NLMCXR_png.tgz (URLs or local paths from params.yaml)."
PARAMS = ["source", "download"]

log = logging.getLogger(__name__)

#: (record key, params URL key, params sha256 key, output file name)
ARCHIVES = (
    ("reports", "reports_url", "reports_sha256", "NLMCXR_reports.tgz"),
    ("images", "images_url", "images_sha256", "NLMCXR_png.tgz"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", default="data/raw",
                        help="folder for NLMCXR_reports.tgz, NLMCXR_png.tgz and download.json")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run(args: argparse.Namespace, params: dict[str, Any]) -> None:
    source, cfg = params["source"], params["download"]
    if source["kind"] == "kaggle":
        raise CxrclipError(
            "source.kind is 'kaggle': there is nothing to download. parse-reports and verify-images read "
            f"indiana_reports.csv, indiana_projections.csv and images/ from source.kaggle_dir "
            f"({source['kaggle_dir']!r}); put the Kaggle files there, or set source.kind: openi."
        )
    out_dir = Path(args.out_dir)
    records = {}
    for name, url_key, sha_key, filename in ARCHIVES:
        records[name] = fetch(
            source[url_key],
            out_dir / filename,
            expected_sha256=source.get(sha_key),
            retries=int(cfg["retries"]),
            backoff_s=float(cfg["backoff_s"]),
            timeout_s=float(cfg["timeout_s"]),
            chunk_bytes=int(cfg["chunk_bytes"]),
            progress=not args.no_progress,
            param_key=f"source.{url_key}",
        )
        rec = records[name]
        log.info("%s: %s -> %s (%d bytes, sha256 %s, attempts %d, resumed %s)", name, rec["url"],
                 rec["path"], rec["bytes"], rec["sha256"], rec["attempts"], rec["resumed"])
    write_json(records, out_dir / "download.json")
