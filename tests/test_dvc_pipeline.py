"""DVC on the offline demo config, in a temporary git repo: reruns exactly what changed, and DVC and
Snakemake never redo each other's work."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from conftest import (
    BIN,
    ROOT,
    demo_params,
    init_git_dvc_repo,
    restore_outputs_from_dvc_cache,
    run,
    snakemake,
    write_params,
)

pytestmark = pytest.mark.e2e

DVC = str(BIN / "dvc")
FINETUNE_AND_DOWNSTREAM = {"finetune", "embed_finetuned", "evaluate_finetuned", "render_tables", "render_figures"}


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def dvc(repo: Path, *args: str):
    return run([DVC, *args], cwd=repo)


def set_param(repo: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    write_params(repo, params)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, copy_project) -> Path:
    return init_git_dvc_repo(tmp_path_factory.mktemp("dvcrepo"), copy_project, demo_params())


@pytest.fixture(scope="module")
def first_repro(repo: Path) -> str:
    return dvc(repo, "repro").stdout


def test_fresh_repro_builds_every_stage(repo: Path, first_repro: str):
    stages = set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    assert ran_stages(first_repro) == stages
    assert (repo / "reports/metrics.md").exists()


def test_second_repro_runs_nothing(repo: Path, first_repro: str):
    out = dvc(repo, "repro").stdout
    assert ran_stages(out) == set(), out


def test_finetune_param_change_reruns_exactly_finetuning_and_downstream(repo: Path, first_repro: str):
    set_param(repo, "train", "lr", 0.0007)
    status = json.loads(dvc(repo, "status", "--json").stdout)
    assert {name.split(":")[-1] for name in status} == {"finetune"}
    # A dry run cannot know that new weights will change the downstream inputs: it lists finetune first.
    dry = ran_stages(dvc(repo, "repro", "--dry").stdout)
    assert "finetune" in dry and dry <= FINETUNE_AND_DOWNSTREAM
    out = dvc(repo, "repro").stdout
    assert ran_stages(out) == FINETUNE_AND_DOWNSTREAM


def test_cleaning_param_change_reruns_parsing_and_after_but_not_download(repo: Path, first_repro: str):
    set_param(repo, "text", "lowercase", True)
    out = dvc(repo, "repro").stdout
    ran = ran_stages(out)
    assert "parse_reports" in ran and "build_splits" in ran and "finetune" in ran
    assert not ran & {"download", "make_synthetic"}


def test_snakemake_after_dvc_checkout_runs_nothing(repo: Path, first_repro: str):
    """Outputs built by DVC alone (no Snakemake metadata): sync mtimes in pipeline order, then nothing reruns."""
    dvc(repo, "repro")
    restore_outputs_from_dvc_cache(repo)
    run([sys.executable, "workflow/scripts/dvc_sync_mtimes.py"], cwd=repo)
    proc = snakemake(repo, "-n")
    assert not re.findall(r"^rule (\w+):", proc.stdout, flags=re.MULTILINE), proc.stdout


def test_experiment_shows_param_and_metric_changes(repo: Path, first_repro: str):
    dvc(repo, "repro")
    run(["git", "add", "-A"], cwd=repo)
    run(["git", "commit", "-qm", "baseline"], cwd=repo)
    dvc(repo, "exp", "run", "-S", "train.lr=0.0003", "--name", "lr3e-4")
    shown = dvc(repo, "exp", "show", "--json").stdout
    assert "lr3e-4" in shown
    assert "0.0003" in dvc(repo, "params", "diff").stdout
    assert "results/finetuned/metrics.json" in dvc(repo, "metrics", "diff", "--all").stdout


def test_project_root_is_a_dvc_repo_with_the_cache_outside_git():
    assert (ROOT / ".dvc/config").exists()
    assert "/cache" in (ROOT / ".dvc/.gitignore").read_text()
