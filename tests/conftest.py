"""Shared fixtures: demo-config projects in temporary folders, the real Kaggle CSVs when present."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_KAGGLE = ROOT.parent / "shared" / "data" / "iuxray-kaggle-reports"
BIN = Path(sys.executable).parent

#: Small, fast settings for end-to-end runs of the demo configuration.
FAST = {
    "synthetic": {"n_reports": 48, "image_size": 128},
    "eval": {"bootstrap": 50},
    "embed": {"batch_size": 32},
    "train": {"epochs": 1, "batch_size": 8, "warmup_steps": 2, "workers": 0, "log_model": False},
}


def deep_update(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def demo_params(**overrides: Any) -> dict[str, Any]:
    """demo/params.yaml with FAST settings and ``overrides`` (nested dicts) applied."""
    params = yaml.safe_load((ROOT / "demo" / "params.yaml").read_text())
    return deep_update(deep_update(params, FAST), overrides)


def write_params(workdir: Path, params: dict[str, Any]) -> Path:
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def tool_env() -> dict[str, str]:
    """Environment where `cxrclip`, `snakemake` and `dvc` of this interpreter come first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "2")
    env["MLFLOW_TRACKING_URI"] = env.get("CXRCLIP_TEST_MLFLOW_URI", "sqlite:///mlflow.db")
    env.pop("CXRCLIP_DVC_COMMIT", None)
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None, timeout: int = 900):
    """Run a command, returning CompletedProcess; on failure show its output in the assertion."""
    proc = subprocess.run(cmd, cwd=cwd, env=env or tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def snakemake(workdir: Path, *args: str, check: bool = True):
    return run(
        [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args],
        cwd=ROOT,
        check=check,
    )


@pytest.fixture
def kaggle_dir() -> Path:
    if not (SHARED_KAGGLE / "indiana_reports.csv").exists():
        pytest.skip("../shared/data/iuxray-kaggle-reports is absent")
    return SHARED_KAGGLE


@pytest.fixture(scope="session")
def copy_project():
    """Factory: copy the tracked project files into a fresh folder (for git/DVC tests)."""

    def _copy(dest: Path) -> Path:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.split()
        for rel in files:
            src = ROOT / rel
            if src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
        return dest

    return _copy


def init_git_dvc_repo(dest: Path, copy_files, params: dict[str, Any]) -> Path:
    """A throwaway git repo holding the project, ``params`` as params.yaml and its generated dvc.yaml."""
    repo = copy_files(dest)
    write_params(repo, params)
    run([sys.executable, "workflow/scripts/export_dvc.py"], cwd=repo)
    run(["git", "init", "-q"], cwd=repo)
    run(["git", "config", "user.email", "ci@example.invalid"], cwd=repo)
    run(["git", "config", "user.name", "ci"], cwd=repo)
    run(["git", "add", "-A"], cwd=repo)
    run(["git", "commit", "-qm", "init"], cwd=repo)
    return repo


def restore_outputs_from_dvc_cache(repo: Path) -> list[str]:
    """Delete every DVC-cached output and bring it back with `dvc checkout` (fresh, unordered mtimes).

    Outputs with ``cache: false`` (metrics, plots, reports) live in git, not in the DVC cache: kept.
    """
    cached = []
    for stage in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].values():
        cached += [out for out in stage.get("outs", []) if isinstance(out, str)]
    for out in cached:
        path = repo / out
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run([str(BIN / "dvc"), "checkout", "--force"], cwd=repo)
    assert all((repo / out).exists() for out in cached)
    return cached
