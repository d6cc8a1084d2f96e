"""MLflow tracking: URI precedence, key sanitising, provenance tags, and one run per method with
identical metric keys in a temporary sqlite store."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cxrclip.cli import main
from cxrclip.errors import CxrclipError
from cxrclip.evaluation.baselines import score_baseline
from cxrclip.evaluation.candidates import save_scores
from cxrclip.tracking import (
    DEFAULT_TRACKING_URI,
    data_fingerprint,
    flatten_params,
    git_commit,
    log_method_run,
    mlflow_key,
    run_tags,
    sqlite_path,
    store_lock,
    tracking_uri,
)

PROJECT = Path(__file__).resolve().parents[1]
TEXTS = [
    "No acute disease.",
    "Cardiomegaly.",
    "Right pleural effusion.",
    "Clear lungs.",
    "Left basilar opacity.",
]
MESH = [["normal"], ["Cardiomegaly"], ["Pleural Effusion/right"], ["normal"], ["Opacity/lung/base"]]


def write_inputs(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A 10-report project (6 train, 4 test, 2 images each) with pairs, reports and params.yaml."""
    reports, pairs = [], []
    for r in range(10):
        rid, text, mesh = f"CXR{r + 1}", TEXTS[r % 5], MESH[r % 5]
        reports.append(
            {
                "report_id": rid,
                "indication": "",
                "mesh_major": mesh,
                "is_normal": mesh == ["normal"],
                "text": text,
            }
        )
        for v in range(2):
            pairs.append(
                {
                    "pair_id": len(pairs),
                    "image_id": f"{rid}_IM-{v}",
                    "report_id": rid,
                    "cache_index": len(pairs),
                    "view": "frontal",
                    "split": "train" if r < 6 else "test",
                    "is_normal": mesh == ["normal"],
                    "text": text,
                }
            )
    pairs_df, reports_df = pd.DataFrame(pairs), pd.DataFrame(reports)
    (root / "data/processed").mkdir(parents=True)
    (root / "data/interim").mkdir(parents=True)
    pairs_df.to_parquet(root / "data/processed/pairs.parquet", index=False)
    reports_df.to_parquet(root / "data/interim/reports.parquet", index=False)
    shutil.copy(PROJECT / "params.yaml", root / "params.yaml")
    return pairs_df, reports_df


def test_tracking_uri_prefers_environment_then_params_then_sqlite_default(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(None) == DEFAULT_TRACKING_URI == "sqlite:///mlflow.db"
    assert tracking_uri({"tracking_uri": "sqlite:///other.db"}) == "sqlite:///other.db"
    assert (
        tracking_uri({"mlflow": {"tracking_uri": "sqlite:///nested.db"}}) == "sqlite:///nested.db"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker:5000")
    assert tracking_uri({"tracking_uri": "sqlite:///other.db"}) == "http://tracker:5000"


def test_mlflow_key_replaces_characters_mlflow_rejects():
    assert mlflow_key("report/i2t_R@5") == "report/i2t_R_at_5"
    assert mlflow_key("normal/label/Hit@10_ci_low") == "normal/label/Hit_at_10_ci_low"
    assert mlflow_key("eval.ks") == "eval.ks"
    assert mlflow_key("a+b") == "a_b"


def test_flatten_params_gives_dotted_string_values():
    assert flatten_params({"eval": {"ks": [1, 5], "ci": 0.95}, "seed": 42}) == {
        "eval.ks": "[1, 5]",
        "eval.ci": "0.95",
        "seed": "42",
    }


def test_data_fingerprint_follows_file_bytes(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"pairs v1")
    b.write_bytes(b"reports")
    first = data_fingerprint([a, b])
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    assert data_fingerprint([a, b]) == first
    a.write_bytes(b"pairs v2")
    assert data_fingerprint([a, b]) != first
    with pytest.raises(CxrclipError, match="missing file"):
        data_fingerprint([tmp_path / "absent.parquet"])


def test_git_commit_is_the_head_sha_inside_a_repository_and_unknown_outside(tmp_path):
    project = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True)
    if head.returncode == 0:
        assert git_commit(project) == head.stdout.strip()
    assert git_commit(tmp_path) == "unknown"


def test_run_tags_carry_params_hash_fingerprint_and_pipeline_run(tmp_path, monkeypatch):
    data = tmp_path / "pairs.parquet"
    data.write_bytes(b"x")
    monkeypatch.setenv("CXRCLIP_PIPELINE_RUN", "run-2024-01")
    tags = run_tags({"seed": 1}, [data])
    assert tags["pipeline_run"] == "run-2024-01"
    assert tags["data_fingerprint"] == data_fingerprint([data])
    assert tags["params_hash"] != run_tags({"seed": 2})["params_hash"]
    assert "git_commit" in tags


def test_sqlite_path_resolves_relative_and_absolute_uris():
    assert sqlite_path("sqlite:///mlflow.db") == Path("mlflow.db")
    assert sqlite_path("sqlite:////srv/x/mlflow.db") == Path("/srv/x/mlflow.db")
    assert sqlite_path("http://tracker:5000") is None
    assert sqlite_path("sqlite:///:memory:") is None


def test_store_lock_makes_a_second_process_wait(tmp_path):
    """Concurrent evaluate stages must not migrate a fresh sqlite store at the same time."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    holder = (
        "import sys, time; from cxrclip.tracking import store_lock\n"
        "with store_lock(sys.argv[1]):\n"
        "    open(sys.argv[2], 'w').close(); time.sleep(1.5)\n"
    )
    started = tmp_path / "started"
    child = subprocess.Popen([sys.executable, "-c", holder, uri, str(started)])
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert started.exists()
        t0 = time.monotonic()
        with store_lock(uri):
            waited = time.monotonic() - t0
        assert waited > 0.5
    finally:
        child.wait(timeout=30)
    assert (tmp_path / "mlflow.db.lock").exists()


def test_two_methods_give_two_runs_with_identical_metric_keys(tmp_path, monkeypatch):
    """End to end through the CLI: `cxrclip evaluate` for two methods into a temporary sqlite store."""
    import mlflow

    pairs, reports = write_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(
        "MLFLOW_TRACKING_URI", raising=False
    )  # params.yaml default: sqlite:///mlflow.db
    monkeypatch.setenv("CXRCLIP_PIPELINE_RUN", "pipeline-1")
    for method in ("tfidf_prior", "random"):
        save_scores(
            f"results/{method}/scores.npz", score_baseline(method, pairs, reports, "test", seed=0)
        )
    for method in ("tfidf_prior", "random"):
        assert main(["evaluate", "--method", method]) == 0
    assert (tmp_path / "mlflow.db").exists()

    mlflow.set_tracking_uri("sqlite:///mlflow.db")
    runs = mlflow.search_runs(experiment_names=["cxrclip"], output_format="list")
    assert sorted(r.info.run_name for r in runs) == ["random", "tfidf_prior"]
    key_sets = [set(r.data.metrics) for r in runs]
    assert key_sets[0] == key_sets[1]
    json_keys = set(json.loads(Path("results/random/metrics.json").read_text()))
    assert key_sets[0] == {mlflow_key(k) for k in json_keys}
    for run in runs:
        method = run.info.run_name
        assert run.data.tags["method"] == method
        assert run.data.tags["pipeline_run"] == "pipeline-1"
        assert re.fullmatch(r"[0-9a-f]{16}", run.data.tags["data_fingerprint"])
        assert re.fullmatch(r"[0-9a-f]{16}", run.data.tags["params_hash"])
        assert run.data.params["eval.split"] == "test" and run.data.params["method"] == method
        artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
        assert artifacts == {"metrics.json", "rankings.parquet"}
    prior = next(r for r in runs if r.info.run_name == "tfidf_prior")
    prior_json = json.loads(Path("results/tfidf_prior/metrics.json").read_text())
    assert prior.data.metrics["report/i2t_R_at_5"] == prior_json["report/i2t_R@5"]
    assert prior.data.metrics["pool/queries"] == 8


def test_log_method_run_reports_an_unusable_store_as_a_user_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a directory")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/a_file/mlflow.db")
    with pytest.raises(CxrclipError, match="MLflow"):
        log_method_run("random", {"a": 1.0}, {}, {}, [])
