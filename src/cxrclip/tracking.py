"""MLflow tracking: one experiment, one run per method per pipeline run, identical metric keys.

Tracking URI: ``MLFLOW_TRACKING_URI`` when set, else ``mlflow.tracking_uri`` from params.yaml,
else ``sqlite:///mlflow.db`` (relative to the working directory). Inspect with ``mlflow ui
--backend-store-uri sqlite:///mlflow.db``.

MLflow metric names may not hold ``@``: :func:`mlflow_key` writes ``R@5`` as ``R_at_5``
(``report/i2t_R@5`` -> ``report/i2t_R_at_5``); the metrics JSON keeps the original keys.
Tags on every run: ``git_commit``, ``params_hash``, ``data_fingerprint``, ``method`` and
``pipeline_run`` (from ``CXRCLIP_PIPELINE_RUN`` when set).

Concurrency: parallel stages (Snakemake ``--cores all``) write to one sqlite file; MLflow's schema
migration on a fresh database is not safe under concurrent processes (measured: 3 of 4 simultaneous
first runs fail with ``duplicate column name``), so every MLflow access here holds an exclusive
``flock`` on ``<database>.lock`` beside a sqlite store (:func:`store_lock`; no-op for other stores).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cxrclip.config import params_hash
from cxrclip.errors import CxrclipError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "cxrclip"
PIPELINE_RUN_ENV = "CXRCLIP_PIPELINE_RUN"
_INVALID_KEY_CHARS = re.compile(r"[^/\w.\- ]")
log = logging.getLogger(__name__)


def _mlflow_section(cfg: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The ``mlflow`` params section, given either that section or a dict holding it under ``mlflow``."""
    cfg = cfg or {}
    nested = cfg.get("mlflow")
    return nested if isinstance(nested, Mapping) else cfg


def tracking_uri(cfg_mlflow: Mapping[str, Any] | None = None) -> str:
    """The tracking URI: env ``MLFLOW_TRACKING_URI`` > ``cfg_mlflow['tracking_uri']`` > sqlite default.

    ``cfg_mlflow``: the ``mlflow`` params section (``{"tracking_uri": ..., "experiment": ...}``) or a
    params dict holding it under ``mlflow``.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    configured = _mlflow_section(cfg_mlflow).get("tracking_uri")
    return str(configured) if configured else DEFAULT_TRACKING_URI


def mlflow_key(key: str) -> str:
    """A metric/param name MLflow accepts: ``@`` -> ``_at_``, other disallowed characters -> ``_``."""
    return _INVALID_KEY_CHARS.sub("_", key.replace("@", "_at_"))


def git_commit(cwd: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` of ``cwd`` (or the working directory); ``unknown`` outside a repository."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else "unknown"


def data_fingerprint(paths: Iterable[str | Path]) -> str:
    """Short (16 hex) sha256 over the bytes of ``paths``, in the given order (file names excluded)."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise CxrclipError(f"cannot fingerprint missing file {path}")
        file_digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                file_digest.update(chunk)
        digest.update(file_digest.digest())
    return digest.hexdigest()[:16]


def run_tags(
    params: Mapping[str, Any] | None = None, data_paths: Iterable[str | Path] = ()
) -> dict[str, str]:
    """Provenance tags: ``git_commit``, ``params_hash`` (of ``params``), ``data_fingerprint`` (of
    ``data_paths``, when any) and ``pipeline_run`` (from ``CXRCLIP_PIPELINE_RUN`` when set)."""
    tags = {"git_commit": git_commit(), "params_hash": params_hash(dict(params or {}))}
    paths = list(data_paths)
    if paths:
        tags["data_fingerprint"] = data_fingerprint(paths)
    pipeline_run = os.environ.get(PIPELINE_RUN_ENV, "").strip()
    if pipeline_run:
        tags["pipeline_run"] = pipeline_run
    return tags


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params -> ``{"eval.ks": "[1, 5, 10]", ...}`` (strings, MLflow-safe keys)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, f"{name}."))
        else:
            out[mlflow_key(name)] = str(value)
    return out


def sqlite_path(uri: str) -> Path | None:
    """Database file of a ``sqlite:///path`` URI (relative to the working directory, or absolute
    with four slashes); None for other stores and in-memory databases."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive inter-process lock on ``<db>.lock`` while using a sqlite store at ``uri``."""
    db = sqlite_path(uri)
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent first runs may collide
        fcntl = None  # type: ignore[assignment]
    if db is None or fcntl is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _quiet() -> None:
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)


def setup(cfg_mlflow: Mapping[str, Any] | None = None) -> str:
    """Point MLflow at :func:`tracking_uri` and select the experiment; returns the experiment id.

    Call inside :func:`store_lock` when other processes may create the same sqlite store.
    """
    import mlflow

    _quiet()
    uri = tracking_uri(cfg_mlflow)
    mlflow.set_tracking_uri(uri)
    name = _mlflow_section(cfg_mlflow).get("experiment") or DEFAULT_EXPERIMENT
    try:
        return mlflow.set_experiment(str(name)).experiment_id
    except Exception as exc:  # unreachable server, locked or corrupt database
        raise CxrclipError(f"MLflow tracking at {uri} failed: {exc}") from exc


def log_method_run(
    method: str,
    metrics: Mapping[str, float],
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    artifacts: Iterable[str | Path] = (),
    run_name: str | None = None,
    cfg_mlflow: Mapping[str, Any] | None = None,
) -> str:
    """Log one finished method evaluation as its own MLflow run; returns the run id.

    ``metrics``: flat metrics (keys through :func:`mlflow_key`; NaN logged as NaN so every run has the
    same key set); ``params``: nested params (flattened); ``tags``: e.g. :func:`run_tags`;
    ``artifacts``: files (metrics JSON, rankings) attached to the run.
    """
    import mlflow

    uri = tracking_uri(cfg_mlflow)
    all_tags = {**tags, "method": method}
    if PIPELINE_RUN_ENV in os.environ and "pipeline_run" not in all_tags:
        all_tags["pipeline_run"] = os.environ[PIPELINE_RUN_ENV]
    clean_metrics = {
        mlflow_key(k): (float(v) if v is not None else math.nan) for k, v in metrics.items()
    }
    try:
        with store_lock(uri):
            setup(cfg_mlflow)
            with mlflow.start_run(run_name=run_name or method) as run:
                mlflow.set_tags(all_tags)
                mlflow.log_params({**flatten_params(params), "method": method})
                mlflow.log_metrics(clean_metrics)
                for path in artifacts:
                    mlflow.log_artifact(str(path))
                return run.info.run_id
    except CxrclipError:
        raise
    except Exception as exc:
        raise CxrclipError(f"MLflow logging to {uri} failed: {exc}") from exc
