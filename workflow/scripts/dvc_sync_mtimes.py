"""Give outputs restored by ``dvc checkout`` / ``dvc pull`` modification times in pipeline order.

DVC restores files with fresh, arbitrary modification times. Snakemake compares an output with its
inputs by time (and, where it recorded them earlier, by checksum); on a machine where Snakemake never
ran, a restored input that happens to be newer than its output would trigger a rerun of an unchanged
step. This script asks DVC which stages are up to date (``dvc status``), then touches the outputs of
those stages one stage after another in ``dvc.yaml`` order, so every output is newer than its inputs.
Outputs of stale stages are left alone: Snakemake and DVC will rebuild them.

Usage (project root, after ``dvc pull`` or ``dvc checkout``):
    python workflow/scripts/dvc_sync_mtimes.py && snakemake --cores all
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml


def stage_outputs(stage: dict) -> list[str]:
    outs = []
    for kind in ("outs", "metrics", "plots"):
        for entry in stage.get(kind, []):
            outs.append(next(iter(entry)) if isinstance(entry, dict) else entry)
    return outs


def touch_tree(path: Path, stamp: float) -> None:
    if path.is_dir():
        for child in sorted(path.rglob("*")):
            os.utime(child, (stamp, stamp), follow_symlinks=False)
    os.utime(path, (stamp, stamp), follow_symlinks=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dvc-yaml", type=Path, default=Path("dvc.yaml"))
    args = parser.parse_args(argv)
    stages = yaml.safe_load(args.dvc_yaml.read_text())["stages"]
    status = subprocess.run(["dvc", "status", "--json"], capture_output=True, text=True, check=True)
    stale = {name.split(":")[-1] for name in json.loads(status.stdout or "{}")}
    start = time.time() - 2 * len(stages)
    touched = 0
    for index, (name, stage) in enumerate(stages.items()):  # dvc.yaml is written in pipeline order
        if name in stale:
            continue
        for out in stage_outputs(stage):
            if Path(out).exists():
                touch_tree(Path(out), start + 2 * index)
                touched += 1
    print(f"synchronised {touched} outputs of {len(stages) - len(stale)} up-to-date stages; stale: {sorted(stale) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
