"""``cxrclip synth``: generate Open-i-format synthetic report/PNG archives and their manifest."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cxrclip.data.synthetic import FULL_SCALE_IMAGE_SIZE, FULL_SCALE_REPORTS, generate_openi

COMMAND = "synth"
HELP = "Generate Open-i-format synthetic NLMCXR_reports.tgz / NLMCXR_png.tgz (+ manifest.json)."
PARAMS = ["synthetic"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", default="data/synthetic", type=Path,
                        help="output folder (default: data/synthetic)")
    parser.add_argument("--full-scale", action="store_true",
                        help=f"Open-i size: {FULL_SCALE_REPORTS} reports, {FULL_SCALE_IMAGE_SIZE} px "
                             "(ignores synthetic.n_reports / synthetic.image_size)")
    parser.add_argument("--workers", type=int, default=0,
                        help="image rendering processes (default 0 = all cores)")


def run(args: argparse.Namespace, params: dict[str, Any]) -> None:
    cfg = params["synthetic"]
    n_reports, image_size = (
        (FULL_SCALE_REPORTS, FULL_SCALE_IMAGE_SIZE) if args.full_scale
        else (int(cfg["n_reports"]), int(cfg["image_size"]))
    )
    manifest = generate_openi(args.out_dir, n_reports=n_reports, image_size=image_size,
                              faults=bool(cfg["faults"]), seed=int(cfg["seed"]),
                              workers=args.workers, progress=True)
    exp = manifest["expected"]
    size_mb = sum(a["bytes"] for a in manifest["archives"].values()) / 1e6
    print(f"synth: {manifest['n_reports']} reports, {manifest['n_images']} PNGs ({image_size} px), "
          f"{len(manifest['faults'])} faults -> expect {len(exp['report_ids_kept'])} reports kept, "
          f"{len(exp['image_ids_ok'])} images ok; {size_mb:.1f} MB in {args.out_dir} "
          f"({manifest['elapsed_s']:.1f} s)")
