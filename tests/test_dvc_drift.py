"""dvc.yaml is generated from the Snakefile; the check fails as soon as a rule and its stage disagree."""

from __future__ import annotations

import sys

import pytest
import yaml

from conftest import ROOT, run

EXPORT = ["workflow/scripts/export_dvc.py"]


def test_committed_dvc_yaml_matches_the_snakefile():
    proc = run([sys.executable, *EXPORT, "--check"], cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr


def test_every_stage_lists_exactly_the_params_its_command_reads():
    from cxrclip.cli import stage_params

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        command = stage["cmd"].split()[1]
        declared = set(stage.get("params", []))
        allowed = set(stage_params(command))
        for key in declared:  # every key is one the CLI selects, or a sub-key of one
            assert any(key == a or key.startswith(a + ".") for a in allowed), (name, key)


@pytest.mark.e2e
def test_drift_check_fails_when_a_rule_changes_but_dvc_yaml_does_not(tmp_path, copy_project):
    repo = copy_project(tmp_path)
    rules = repo / "workflow/rules/data.smk"
    text = rules.read_text()
    broken = text.replace("--out {output.pairs}", "--out {output.pairs} -v")
    assert broken != text
    rules.write_text(broken)
    proc = run([sys.executable, *EXPORT, "--check"], cwd=repo, check=False)
    assert proc.returncode == 1
    assert "out of date" in proc.stderr
