"""End-to-end: the Snakemake workflow on the offline demo configuration (generated data, tiny model)."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import (
    BIN,
    demo_params,
    init_git_dvc_repo,
    restore_outputs_from_dvc_cache,
    run,
    snakemake,
    write_params,
)

pytestmark = pytest.mark.e2e


def planned_rules(dry_run_stdout: str) -> set[str]:
    """Rule names a `snakemake -n` run would execute."""
    return set(re.findall(r"^rule (\w+):", dry_run_stdout, flags=re.MULTILINE))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, copy_project) -> Path:
    """The whole demo workflow, once, with every fault injected."""
    repo = init_git_dvc_repo(tmp_path_factory.mktemp("demo"), copy_project, demo_params())
    snakemake(repo)  # onsuccess: dvc commit --force
    return repo


def test_bad_param_stops_with_one_message_naming_the_key(tmp_path):
    params = demo_params(images={"size": -3})
    write_params(tmp_path, params)
    proc = snakemake(tmp_path, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "invalid value for 'images.size'" in out
    assert "Traceback" not in out


def test_overriding_params_on_the_command_line_is_refused(tmp_path):
    write_params(tmp_path, demo_params())
    proc = snakemake(tmp_path, "-n", "--config", "seed=7", check=False)
    assert proc.returncode != 0
    assert "edit params.yaml" in proc.stdout + proc.stderr


def test_snakemake_lint_is_clean(tmp_path):
    write_params(tmp_path, demo_params())
    proc = snakemake(tmp_path, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


def test_parquet_outputs_hold_exactly_the_expected_rows_and_every_fault_is_excluded(demo_run: Path):
    manifest = json.loads((demo_run / "data/synthetic/manifest.json").read_text())
    expected = manifest["expected"]
    reports = pd.read_parquet(demo_run / "data/interim/reports.parquet")
    report_excl = pd.read_parquet(demo_run / "data/interim/report_exclusions.parquet")
    images = pd.read_parquet(demo_run / "data/interim/images.parquet")
    image_excl = pd.read_parquet(demo_run / "data/interim/image_exclusions.parquet")

    assert sorted(reports["report_id"]) == sorted(expected["report_ids_kept"])
    got = sorted((r.source_file, r.reason) for r in report_excl.itertuples())
    want = sorted((e["source_file"], e["reason"]) for e in expected["report_exclusions"])
    assert got == want
    assert sorted(images.loc[images["ok"], "image_id"]) == sorted(expected["image_ids_ok"])
    got_img = sorted((r.image_id, r.reason) for r in image_excl.itertuples())
    want_img = sorted((e["image_id"], e["reason"]) for e in expected["image_exclusions"])
    assert got_img == want_img
    assert not reports["text"].str.contains("XXXX").any()
    hostname = socket.gethostname()
    assert not any(hostname in t for t in reports["findings"].tolist() + reports["text"].tolist())


def test_unsafe_archive_members_wrote_nothing_outside_the_data_folder(demo_run: Path):
    for evil in ("/tmp/evil.xml", "/tmp/evil.png", str(demo_run.parent / "evil"), str(demo_run / "evil")):
        assert not Path(evil).exists(), evil


def test_splits_are_leak_free(demo_run: Path):
    pairs = pd.read_parquet(demo_run / "data/processed/pairs.parquet")
    assert set(pairs["split"]) == {"train", "val", "test"}
    assert (pairs.groupby("report_id")["split"].nunique() == 1).all()
    assert pairs["image_id"].is_unique


def test_every_method_logged_one_mlflow_run_with_the_same_metric_keys(demo_run: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{demo_run / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True)
    methods = {"random", "tfidf_prior", "tfidf_indication", "zeroshot", "finetuned"}
    eval_runs = runs[runs["tags.mlflow.runName"].isin(methods)]
    assert set(eval_runs["tags.mlflow.runName"]) == methods
    assert len(eval_runs) == len(methods)
    key_sets = {
        method: frozenset(json.loads((demo_run / f"results/{method}/metrics.json").read_text()))
        for method in methods
    }
    assert len(set(key_sets.values())) == 1


def test_reports_hold_tables_and_figures(demo_run: Path):
    assert (demo_run / "reports/metrics.md").stat().st_size > 0
    table = pd.read_csv(demo_run / "reports/metrics.csv")
    assert len(table) >= 5
    assert list((demo_run / "reports/figures").glob("*.png"))
    assert (demo_run / "reports/data/counts.md").exists()


def test_second_run_with_nothing_changed_runs_no_job(demo_run: Path):
    proc = snakemake(demo_run, "-n")
    assert planned_rules(proc.stdout) == set(), proc.stdout


def test_changing_a_cleaning_param_reruns_parsing_and_dependents_not_download(demo_run: Path):
    params = yaml.safe_load((demo_run / "params.yaml").read_text())
    params["text"]["lowercase"] = not params["text"]["lowercase"]
    write_params(demo_run, params)
    try:
        planned = planned_rules(snakemake(demo_run, "-n").stdout)
    finally:
        params["text"]["lowercase"] = not params["text"]["lowercase"]
        write_params(demo_run, params)
    assert "parse_reports" in planned
    assert {"verify_images", "build_splits", "evaluate", "finetune"} <= planned
    assert not planned & {"download", "make_synthetic"}


def test_snakemake_report_is_self_contained_html(demo_run: Path):
    snakemake(demo_run, "--report", "reports/report.html")
    html = (demo_run / "reports/report.html").read_text(errors="replace")
    assert "<html" in html.lower() and len(html) > 10_000



def test_dvc_status_is_clean_after_a_snakemake_run(demo_run: Path):
    out = run([str(BIN / "dvc"), "status"], cwd=demo_run).stdout
    assert "up to date" in out, out


def test_outputs_restored_by_dvc_checkout_do_not_rerun(demo_run: Path):
    """Snakemake recorded input checksums: restored files with new mtimes trigger nothing."""
    restore_outputs_from_dvc_cache(demo_run)
    assert planned_rules(snakemake(demo_run, "-n").stdout) == set()
