"""MLflow logging for fine-tuning: params, per-step and per-epoch metrics, best weights, checkpoint tag.

The trainer talks to a tracker; :class:`NullTracker` does nothing (tests, ranks > 0) and
:class:`MlflowTracker` writes one MLflow run (``run_name`` ``finetune``, tag ``stage=finetune``), re-opened
under the same run id when training resumes after a crash. URI, key spelling (``@`` -> ``_at_``),
provenance tags and the inter-process lock on a sqlite store come from :mod:`cxrclip.tracking`.
MLflow failures become :class:`~cxrclip.errors.CxrclipError` with the URI in the message.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from cxrclip.errors import CxrclipError
from cxrclip.tracking import flatten_params, mlflow_key, store_lock

log = logging.getLogger(__name__)


class NullTracker:
    """A tracker that records nothing (the interface :func:`~cxrclip.training.loop.fit` calls)."""

    run_id: str | None = None

    def start(self, resume_run_id: str | None = None) -> str | None:
        return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_metric_series(self, rows: Iterable[tuple[int, Mapping[str, float]]]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass


class MlflowTracker(NullTracker):
    """One MLflow run in ``experiment`` at ``tracking_uri``."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str = "finetune", tags: Mapping[str, str] | None = None):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.tags = {"stage": "finetune", **dict(tags or {})}
        self.run_id: str | None = None
        self._client = None

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            with store_lock(self.tracking_uri):
                return fn()
        except Exception as exc:
            raise CxrclipError(f"MLflow {what} at {self.tracking_uri} failed: {exc}") from exc

    def start(self, resume_run_id: str | None = None) -> str | None:
        """Open (or re-open after a crash) the run; return its id."""
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic", "sqlalchemy"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        if resume_run_id:
            try:
                run = self._call("get_run", lambda: self._client.get_run(resume_run_id))
                self.run_id = run.info.run_id
                self._call("update_run", lambda: self._client.update_run(self.run_id, status="RUNNING"))
                log.info("MLflow: continuing run %s", self.run_id)
                return self.run_id
            except CxrclipError as exc:  # deleted run, other store: start a new one
                log.warning("cannot resume MLflow run %s (%s): starting a new run", resume_run_id, exc)

        def create() -> str:
            exp = self._client.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp else self._client.create_experiment(self.experiment)
            return self._client.create_run(exp_id, run_name=self.run_name, tags=self.tags).info.run_id

        self.run_id = self._call("create_run", create)
        return self.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in flatten_params(params).items()]
        for start in range(0, len(items), 100):
            chunk = items[start : start + 100]
            self._call("log_params", lambda c=chunk: self._client.log_batch(self.run_id, params=c))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.log_metric_series([(step, metrics)])

    def log_metric_series(self, rows: Iterable[tuple[int, Mapping[str, float]]]) -> None:
        """Log ``(step, {key: value})`` rows in batches (one database transaction per 1000 values)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(mlflow_key(k), float(v) if v is not None else math.nan, now, int(step))
            for step, metrics in rows
            for k, v in metrics.items()
            if isinstance(v, (int, float)) or v is None
        ]
        for start in range(0, len(items), 1000):
            chunk = items[start : start + 1000]
            self._call("log_metrics", lambda c=chunk: self._client.log_batch(self.run_id, metrics=c))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._call("set_tags", lambda: self._client.log_batch(self.run_id, tags=items))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifact", lambda: self._client.log_artifact(self.run_id, str(path), artifact_path))

    def end(self, status: str = "FINISHED") -> None:
        if self._client is not None and self.run_id:
            self._call("set_terminated", lambda: self._client.set_terminated(self.run_id, status=status))
