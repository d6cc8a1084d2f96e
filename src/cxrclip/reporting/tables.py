"""Results tables from the pipeline's artifacts: Markdown (+ HTML) for people, a tidy CSV for machines.

Four tables, always rebuilt from ``results/<method>/metrics.json``, ``results/<method>/rankings.parquet``
and ``models/finetuned/history.csv`` (schemas: ``docs/architecture.md``, keys:
``cxrclip.evaluation.evaluate``):

1. ``methods`` - one row per method: every headline metric with its bootstrap interval, pool sizes,
   plus a ``chance`` row (analytic expectation under random ranking) where the metrics JSON has one;
2. ``subgroups`` - the same for normal and abnormal queries separately;
3. ``paired`` - fine-tuned minus zero-shot on the same queries, with a bootstrap interval of the
   difference (resampling reports) and McNemar's exact p on binary hits
   (:func:`cxrclip.evaluation.evaluate.paired_comparison`);
4. ``study`` - the study's claims (:data:`STUDY_CLAIMS`) beside our measured values under the paper
   protocol, with chance levels.

Every number in the CSV carries its ``source`` (file and key), so it can be traced back and checked.
A missing input raises :class:`~cxrclip.errors.CxrclipError` naming the file and the stage that writes it
(tables never silently drop a method).
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrclip.data.io import atomic_path
from cxrclip.errors import CxrclipError
from cxrclip.reporting.style import METHOD_ORDER, method_label

log = logging.getLogger(__name__)

#: Methods compared by the paired table: (A, B), difference = A - B.
PAIRED_METHODS: tuple[str, str] = ("finetuned", "zeroshot")

#: The study's quantitative claims: Guntaka, Malyala, Yallavula, "Automated Report Generation from
#: Medical Images Using Vision-Language Models" (University at Buffalo), section 8 "Results and
#: analysis" and 9.1. Loss values: Table 2 (section 8.1), symmetric contrastive loss at batch 32,
#: 5 epochs, 371 iterations per epoch. Cosine range: section 8.2 "Key observations" (repeated in
#: 8.6). Top-1 gain: sections 8.6 and 9.1 ("a 41 percent increase in Top-1 accuracy over the
#: zero-shot baseline", read as relative). Normal vs abnormal: section 8.2 ("23% higher accuracy for
#: normal findings vs pathological cases", read as relative). Normal share: section 8.4 ("68% of
#: successful retrievals involved reports describing normal findings"). Section 8.1 also states a
#: 6.8% loss decline, which contradicts Table 2 ((2.7438 - 2.4144) / 2.7438 = 12.0%); we quote Table 2.
STUDY_LOSS_PER_EPOCH: tuple[float, ...] = (
    2.7438,
    2.6657,
    2.5855,
    2.5013,
    2.4144,
)  # §8.1 Table 2, epochs 1-5
STUDY_CLAIMS: dict[str, float] = {
    "top1_relative_gain": 0.41,
    "cosine_successful_low": 0.29,
    "cosine_successful_high": 0.33,
    "loss_first_epoch": STUDY_LOSS_PER_EPOCH[0],
    "loss_last_epoch": STUDY_LOSS_PER_EPOCH[-1],
    "batch_size": 32,
    "epochs": 5,
    "iterations_per_epoch": 371,
    "normal_vs_abnormal_top1_relative": 0.23,
    "normal_share_of_successes": 0.68,
}


# --------------------------------------------------------------------------- which metrics, one place


@dataclass(frozen=True)
class MetricSpec:
    """One metric column: ``key`` in metrics.json, display ``label``, ``kind`` (fraction|score|rank|count)."""

    key: str
    label: str
    kind: str = "fraction"


def metric_ks(keys: Sequence[str]) -> list[int]:
    """The K values present in a metrics key set (from ``report/i2t_R@K``), ascending."""
    found = {int(m.group(1)) for k in keys if (m := re.fullmatch(r"report/i2t_R@(\d+)", k))}
    return sorted(found) or [1, 5, 10]


#: The paper protocol's Top-1 under each tie rule: (metrics key, per-query rankings column, description).
#: With duplicated texts in the pool (the other view of a study, common normal reports) the true column
#: ties with its duplicates, so the pessimistic rule can leave Top-1 near 0; the study's (unstated) argsort
#: is closest to random tie-breaking.
PAPER_TOP1_VARIANTS: tuple[tuple[str, str, str], ...] = (
    ("paper/top1", "hit1_paper", "ties pessimistic"),
    ("paper/top1_random_ties", "hit1_paper_random_ties", "ties broken at random"),
    ("paper/top1_any", "hit1_paper_any", "top-1 text equals the true text"),
)
#: A "successful retrieval" in the study-vs-us table: the top-1 report text equals the true one.
SUCCESS_COLUMN = "hit1_paper_any"


def retrieval_specs(ks: Sequence[int]) -> list[MetricSpec]:
    """Image -> report retrieval columns: the paper protocol, then the de-duplicated report level."""
    specs = [
        MetricSpec("paper/top1", "Top-1 (paper)"),
        MetricSpec("paper/top1_random_ties", "Top-1 (paper, random ties)"),
        MetricSpec("paper/top1_any", "Top-1 (paper, same text)"),
        MetricSpec("paper/top3", "Top-3 (paper)"),
    ]
    specs += [MetricSpec(f"report/i2t_R@{k}", f"I→T R@{k}") for k in ks]
    specs += [
        MetricSpec("report/i2t_MRR", "I→T MRR", "score"),
        MetricSpec("report/i2t_median_rank", "I→T median rank", "rank"),
    ]
    return specs


def secondary_specs(ks: Sequence[int]) -> list[MetricSpec]:
    """Text -> image, label-level, text-similarity and score-level columns."""
    specs = [MetricSpec(f"report/t2i_R@{k}", f"T→I R@{k}") for k in ks]
    specs += [MetricSpec(f"label/P@{k}", f"Label P@{k}") for k in ks]
    specs += [MetricSpec(f"label/Hit@{k}", f"Label Hit@{k}") for k in ks]
    specs += [
        MetricSpec("text/top1_tfidf_cosine", "Top-1 TF-IDF cos", "score"),
        MetricSpec("cosine/true_mean", "Score true pair", "score"),
        MetricSpec("cosine/top1_mean", "Score top-1", "score"),
        MetricSpec("cosine/negative_mean", "Score negatives", "score"),
    ]
    return specs


def subgroup_specs(ks: Sequence[int]) -> list[MetricSpec]:
    """Columns of the normal-vs-abnormal table."""
    k_mid = ks[len(ks) // 2]
    return [
        MetricSpec("paper/top1", "Top-1 (paper)"),
        MetricSpec("paper/top1_random_ties", "Top-1 (paper, random ties)"),
        MetricSpec("paper/top3", "Top-3 (paper)"),
        *[MetricSpec(f"report/i2t_R@{k}", f"I→T R@{k}") for k in ks],
        MetricSpec("report/i2t_MRR", "I→T MRR", "score"),
        MetricSpec(f"label/P@{k_mid}", f"Label P@{k_mid}"),
        MetricSpec("cosine/true_mean", "Score true pair", "score"),
    ]


def overview_specs(ks: Sequence[int]) -> list[MetricSpec]:
    """Headline fractions for the at-a-glance bar chart."""
    k_mid = ks[len(ks) // 2]
    return [
        MetricSpec("paper/top1", "Top-1 (paper)"),
        MetricSpec("paper/top1_random_ties", "Top-1 (paper, random ties)"),
        MetricSpec("paper/top3", "Top-3 (paper)"),
        *[MetricSpec(f"report/i2t_R@{k}", f"I→T R@{k}") for k in ks],
        MetricSpec(f"label/P@{k_mid}", f"Label P@{k_mid}"),
        MetricSpec(f"label/Hit@{ks[0]}", f"Label Hit@{ks[0]}"),
    ]


#: Pool-size columns of the methods table (metrics.json key, label).
POOL_SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("pool/queries", "Queries", "count"),
    MetricSpec("pool/paper_candidates", "Paper pool", "count"),
    MetricSpec("pool/report_candidates", "Report pool", "count"),
)

#: Per-query rankings columns compared in the paired table -> the metrics.json key they average to.
PAIRED_COLUMNS: dict[str, MetricSpec] = {
    "hit1_paper": MetricSpec("paper/top1", "Top-1 (paper)"),
    "hit1_paper_random_ties": MetricSpec("paper/top1_random_ties", "Top-1 (paper, random ties)"),
    "hit1_paper_any": MetricSpec("paper/top1_any", "Top-1 (paper, same text)"),
    "hit3_paper": MetricSpec("paper/top3", "Top-3 (paper)"),
    "hit1_report": MetricSpec("report/i2t_R@1", "I→T R@1"),
    "hit5_report": MetricSpec("report/i2t_R@5", "I→T R@5"),
    "hit10_report": MetricSpec("report/i2t_R@10", "I→T R@10"),
    "rr_report": MetricSpec("report/i2t_MRR", "I→T MRR", "score"),
    "p5_label": MetricSpec("label/P@5", "Label P@5"),
    "hit5_label": MetricSpec("label/Hit@5", "Label Hit@5"),
    "top1_tfidf_cosine": MetricSpec("text/top1_tfidf_cosine", "Top-1 TF-IDF cos", "score"),
}

#: rankings.parquet columns the tables read (besides :data:`PAIRED_COLUMNS`).
RANKING_COLUMNS = ("pair_id", "report_id", "is_normal", "hit1_paper", SUCCESS_COLUMN, "top1_score")
SUBSETS = ("normal", "abnormal")


# --------------------------------------------------------------------------- table model


@dataclass(frozen=True)
class Cell:
    """One number: ``value`` with an optional interval ``[low, high]``.

    ``interval``: ``"ci"`` (bootstrap confidence interval), ``"range"`` (a stated range, ``value`` may be
    NaN) or ``""``; ``kind`` picks the display format; ``source``: where the number comes from
    (``file#key`` or a paper section).
    """

    value: float
    low: float = math.nan
    high: float = math.nan
    interval: str = ""
    kind: str = "fraction"
    source: str = ""


@dataclass
class Table:
    """An ordered grid of :class:`Cell` s with row/column labels and notes shown under it."""

    name: str
    title: str
    rows: dict[str, str] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def put(self, row: str, row_label: str, column: str, column_label: str, cell: Cell) -> None:
        self.rows.setdefault(row, row_label)
        self.columns.setdefault(column, column_label)
        self.cells[(row, column)] = cell


def format_number(value: float, kind: str) -> str:
    """Display text of ``value``: fraction/score 3 decimals, rank 1 decimal, count integer,
    loss 4 decimals, relative as a signed percentage; NaN -> ``–``."""
    if value is None or not math.isfinite(value):
        return "–"
    if kind == "count":
        return f"{value:,.0f}"
    if kind == "rank":
        return f"{value:.1f}"
    if kind == "loss":
        return f"{value:.4f}"
    if kind == "relative":
        return f"{value:+.1%}"
    if kind == "diff":
        return f"{value:+.3f}"
    if kind == "pvalue":
        return f"{value:.3g}"
    return f"{value:.3f}"


def format_cell(cell: Cell) -> str:
    """``value [low, high]`` for intervals, ``low–high`` for ranges without a value, else ``value``."""
    has_interval = math.isfinite(cell.low) and math.isfinite(cell.high)
    if cell.interval == "range" and not math.isfinite(cell.value) and has_interval:
        return f"{format_number(cell.low, cell.kind)}–{format_number(cell.high, cell.kind)}"
    text = format_number(cell.value, cell.kind)
    if cell.interval and has_interval and math.isfinite(cell.value):
        text += f" [{format_number(cell.low, cell.kind)}, {format_number(cell.high, cell.kind)}]"
    return text


# --------------------------------------------------------------------------- loading


def _as_float(value: object) -> float:
    return math.nan if value is None else float(value)  # type: ignore[arg-type]


def flatten_metrics(raw: Mapping[str, object], prefix: str = "") -> dict[str, float]:
    """Flat ``{"a/b": float}`` from a (possibly nested) metrics mapping; JSON ``null`` -> NaN."""
    out: dict[str, float] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, f"{name}/"))
        elif isinstance(value, (int, float)) or value is None:
            out[name] = _as_float(value)
    return out


def metrics_path(results_dir: str | Path, method: str) -> Path:
    return Path(results_dir) / method / "metrics.json"


def rankings_path(results_dir: str | Path, method: str) -> Path:
    return Path(results_dir) / method / "rankings.parquet"


def load_metrics(
    results_dir: str | Path, methods: Sequence[str] = METHOD_ORDER
) -> dict[str, dict[str, float]]:
    """``{method: flat metrics}`` read from ``<results_dir>/<method>/metrics.json``.

    Raises :class:`CxrclipError` naming the first missing or unreadable file.
    """
    out: dict[str, dict[str, float]] = {}
    for method in methods:
        path = metrics_path(results_dir, method)
        if not path.exists():
            raise CxrclipError(
                f"metrics file not found: {path} (run `cxrclip evaluate --method {method}`, "
                f"or `snakemake {path}`); every method's results are needed for the tables"
            )
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CxrclipError(f"cannot read metrics file {path}: {exc}") from exc
        if not isinstance(raw, Mapping):
            raise CxrclipError(f"metrics file {path} must hold a JSON object of numbers")
        out[method] = flatten_metrics(raw)
    key_sets = {m: set(v) for m, v in out.items()}
    reference = next(iter(key_sets.values()), set())
    for method, keys in key_sets.items():
        if keys != reference:
            log.warning(
                "%s has a different metric key set than the other methods (stale results?)", method
            )
    return out


def load_rankings(
    results_dir: str | Path, method: str, columns: Sequence[str] = ()
) -> pd.DataFrame:
    """``<results_dir>/<method>/rankings.parquet``; raises :class:`CxrclipError` when missing or lacking
    one of ``columns``."""
    path = rankings_path(results_dir, method)
    if not path.exists():
        raise CxrclipError(
            f"rankings file not found: {path} (run `cxrclip evaluate --method {method}`)"
        )
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise CxrclipError(f"cannot read rankings file {path}: {exc}") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CxrclipError(
            f"{path} lacks column(s) {missing} (written by an older `cxrclip evaluate`?)"
        )
    return frame


def load_history(path: str | Path) -> pd.DataFrame:
    """Per-epoch training history (``epoch``, ``train_loss``, ``val/...``), sorted by epoch."""
    path = Path(path)
    if not path.exists():
        raise CxrclipError(f"training history not found: {path} (run `cxrclip finetune` first)")
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.EmptyDataError) as exc:
        raise CxrclipError(f"cannot read training history {path}: {exc}") from exc
    missing = {"epoch", "train_loss"} - set(frame.columns)
    if missing:
        raise CxrclipError(f"training history {path} lacks column(s) {sorted(missing)}")
    if frame.empty:
        raise CxrclipError(f"training history {path} has no epochs")
    return frame.sort_values("epoch", kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- the four tables


def _metric_cell(
    metrics: Mapping[str, float],
    method: str,
    spec: MetricSpec,
    results_dir: str,
    key: str | None = None,
) -> Cell:
    key = key or spec.key
    source = f"{metrics_path(results_dir, method).as_posix()}#{key}"
    value = metrics.get(key, math.nan)
    low = metrics.get(f"{key}_ci_low", math.nan)
    high = metrics.get(f"{key}_ci_high", math.nan)
    interval = "ci" if math.isfinite(low) and math.isfinite(high) else ""
    return Cell(value, low, high, interval, spec.kind, source)


def methods_table(
    metrics: Mapping[str, Mapping[str, float]],
    specs: Sequence[MetricSpec],
    name: str,
    title: str,
    results_dir: str = "results",
    pools: Sequence[MetricSpec] = (),
    ci: float = 0.95,
) -> Table:
    """One row per method over ``specs`` (+ ``pools``), plus a ``chance`` row where ``<key>_chance`` exists."""
    table = Table(name, title)
    for method, values in metrics.items():
        for spec in [*specs, *pools]:
            table.put(
                method,
                method_label(method),
                spec.key,
                spec.label,
                _metric_cell(values, method, spec, results_dir),
            )
    reference_method = next(iter(metrics), None)
    if reference_method is not None:
        values = metrics[reference_method]
        for spec in specs:
            chance_key = f"{spec.key}_chance"
            if chance_key in values:
                table.put(
                    "chance",
                    "Chance (random ranking)",
                    spec.key,
                    spec.label,
                    Cell(
                        values[chance_key],
                        kind=spec.kind,
                        source=f"{metrics_path(results_dir, reference_method).as_posix()}#{chance_key}",
                    ),
                )
        for spec in pools:  # keep the column order; pools have no chance value
            table.columns.setdefault(spec.key, spec.label)
    table.notes.append(
        f"Brackets: {ci:.0%} percentile bootstrap interval resampling reports (all images of a report "
        "together). Paper protocol: every test image against every test image's report text, no "
        "de-duplication; duplicates of the true text (the other view, common normal reports) tie with it: "
        "'Top-1 (paper)' ranks them first (pessimistic), 'random ties' is the expected hit rate under random "
        "tie-breaking, 'same text' counts any top-1 text equal to the true one. I→T/T→I: report level over "
        "the unique normalised texts; chance: expected value under random ranking."
    )
    return table


def subgroup_table(
    metrics: Mapping[str, Mapping[str, float]],
    specs: Sequence[MetricSpec],
    results_dir: str = "results",
    ci: float = 0.95,
) -> Table:
    """Rows ``<method>/<subset>`` for normal and abnormal queries (candidates stay the whole pool)."""
    table = Table("subgroups", "Normal vs abnormal studies")
    for method, values in metrics.items():
        for subset in SUBSETS:
            row = f"{method}/{subset}"
            label = f"{method_label(method)} · {subset}"
            for spec in specs:
                table.put(
                    row,
                    label,
                    spec.key,
                    spec.label,
                    _metric_cell(values, method, spec, results_dir, f"{subset}/{spec.key}"),
                )
            queries = MetricSpec("pool/queries", "Queries", "count")
            table.put(
                row,
                label,
                queries.key,
                queries.label,
                _metric_cell(values, method, queries, results_dir, f"{subset}/pool/queries"),
            )
    table.notes.append(
        f"Queries restricted by the report's MeSH label (normal = MeSH major exactly 'normal'); the "
        f"candidate pool stays the whole split. Brackets: {ci:.0%} bootstrap interval."
    )
    return table


def paired_table(
    rankings_a: pd.DataFrame,
    rankings_b: pd.DataFrame,
    methods: tuple[str, str] = PAIRED_METHODS,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    results_dir: str = "results",
) -> tuple[Table, dict[str, float]]:
    """Paired comparison of ``methods[0]`` (A) minus ``methods[1]`` (B) on the same queries.

    Uses :func:`cxrclip.evaluation.evaluate.paired_comparison` (bootstrap over reports) and
    :func:`cxrclip.evaluation.metrics.mcnemar` for each binary hit column. Returns the table and the raw
    comparison dict.
    """
    from cxrclip.evaluation import metrics as M
    from cxrclip.evaluation.evaluate import paired_comparison

    method_a, method_b = methods
    a = rankings_a.sort_values("pair_id", kind="stable").reset_index(drop=True)
    b = rankings_b.sort_values("pair_id", kind="stable").reset_index(drop=True)
    if not np.array_equal(a["pair_id"].to_numpy(), b["pair_id"].to_numpy()):
        raise CxrclipError(
            f"{method_a} and {method_b} rankings hold different queries (pair_id differ): "
            "were they evaluated on the same split? Rerun `cxrclip evaluate` for both"
        )
    columns = [c for c in PAIRED_COLUMNS if c in a.columns and c in b.columns]
    if not columns:
        raise CxrclipError(f"rankings hold none of the per-query columns {list(PAIRED_COLUMNS)}")
    hit_column = "hit1_paper" if "hit1_paper" in columns else columns[0]
    result = paired_comparison(
        a,
        b,
        a["report_id"].astype(str).tolist(),
        n_boot=n_boot,
        seed=seed,
        ci=ci,
        columns=columns,
        hit_column=hit_column,
    )
    file_a = rankings_path(results_dir, method_a).as_posix()
    file_b = rankings_path(results_dir, method_b).as_posix()
    table = Table(
        "paired", f"Paired comparison: {method_label(method_a)} − {method_label(method_b)}"
    )
    for column in columns:
        spec = PAIRED_COLUMNS[column]
        table.put(
            column,
            spec.label,
            method_b,
            method_label(method_b),
            Cell(result[f"{column}/b"], kind=spec.kind, source=f"{file_b}#mean({column})"),
        )
        table.put(
            column,
            spec.label,
            method_a,
            method_label(method_a),
            Cell(result[f"{column}/a"], kind=spec.kind, source=f"{file_a}#mean({column})"),
        )
        table.put(
            column,
            spec.label,
            "diff",
            "Difference",
            Cell(
                result[f"{column}/diff"],
                result[f"{column}/diff_ci_low"],
                result[f"{column}/diff_ci_high"],
                "ci",
                "diff",
                f"paired_comparison#{column}/diff",
            ),
        )
        values_a, values_b = a[column].to_numpy(np.float64), b[column].to_numpy(np.float64)
        binary = bool(np.isin(values_a, (0.0, 1.0)).all() and np.isin(values_b, (0.0, 1.0)).all())
        if column.startswith("hit") and binary:
            test = M.mcnemar(values_a, values_b)
            table.put(
                column,
                spec.label,
                "mcnemar_p",
                "McNemar p",
                Cell(test["p_exact"], kind="pvalue", source=f"mcnemar#{column}"),
            )
        else:
            table.columns.setdefault("mcnemar_p", "McNemar p")
    table.notes.append(
        f"Same {int(result['n_queries'])} queries for both methods. Difference = "
        f"{method_label(method_a)} − {method_label(method_b)}, {ci:.0%} bootstrap interval resampling reports "
        f"({n_boot} resamples, seed {seed}); McNemar: exact two-sided binomial test on the discordant hits."
    )
    return table, result


def _conditional_mean(values: pd.Series, mask: pd.Series) -> float:
    selected = values.to_numpy(np.float64)[mask.to_numpy(bool)]
    return float(selected.mean()) if selected.size else math.nan


def study_table(
    metrics: Mapping[str, Mapping[str, float]],
    rankings: Mapping[str, pd.DataFrame],
    history: pd.DataFrame,
    paired: Mapping[str, float],
    batch_size: int,
    results_dir: str = "results",
    history_path: str = "history.csv",
) -> Table:
    """The study's claims beside our values (zero-shot, fine-tuned) and the chance level.

    ``rankings``: ``zeroshot`` and ``finetuned`` rankings (``hit1_paper``, ``top1_score``, ``is_normal``);
    ``paired``: :func:`paired_table`'s raw result (fine-tuned − zero-shot); ``batch_size``: our training
    batch (the contrastive loss at chance is ``ln(batch)``).
    """
    claims = STUDY_CLAIMS
    table = Table("study", "The study's claims vs. our measurements (paper protocol)")
    cols = {
        "study": "Study",
        "zeroshot": method_label("zeroshot"),
        "finetuned": method_label("finetuned"),
        "chance": "Chance / reference",
    }
    zs, ft = metrics["zeroshot"], metrics["finetuned"]
    mfile = {
        m: f"{metrics_path(results_dir, m).as_posix()}" for m in ("zeroshot", "finetuned", "random")
    }
    rfile = {m: f"{rankings_path(results_dir, m).as_posix()}" for m in ("zeroshot", "finetuned")}

    def put(row: str, label: str, column: str, cell: Cell) -> None:
        table.put(row, label, column, cols[column], cell)

    for column in cols:
        table.columns.setdefault(column, cols[column])

    # Top-1 accuracy and its gain, under each tie rule of the paper protocol
    for key, column, rule in PAPER_TOP1_VARIANTS:
        suffix = key.removeprefix("paper/top1")
        label = f"Top-1 accuracy ({rule})"
        put(
            f"top1{suffix}",
            label,
            "zeroshot",
            _metric_cell(zs, "zeroshot", MetricSpec(key, label), results_dir),
        )
        put(
            f"top1{suffix}",
            label,
            "finetuned",
            _metric_cell(ft, "finetuned", MetricSpec(key, label), results_dir),
        )
        if "random" in metrics:
            put(
                f"top1{suffix}",
                label,
                "chance",
                _metric_cell(metrics["random"], "random", MetricSpec(key, label), results_dir),
            )
        label = f"Top-1 gain over zero-shot, relative ({rule})"
        put(
            f"top1_gain_relative{suffix}",
            label,
            "study",
            Cell(claims["top1_relative_gain"], kind="relative", source="paper §8.6, §9.1"),
        )
        zs_top1, ft_top1 = zs.get(key, math.nan), ft.get(key, math.nan)
        put(
            f"top1_gain_relative{suffix}",
            label,
            "finetuned",
            Cell(
                ft_top1 / zs_top1 - 1.0 if zs_top1 > 0 else math.nan,
                kind="relative",
                source=f"{mfile['finetuned']}#{key} / {mfile['zeroshot']}#{key} - 1",
            ),
        )
        if f"{column}/diff" in paired:
            label = f"Top-1 gain over zero-shot, absolute ({rule})"
            put(
                f"top1_gain_absolute{suffix}",
                label,
                "finetuned",
                Cell(
                    paired[f"{column}/diff"],
                    paired[f"{column}/diff_ci_low"],
                    paired[f"{column}/diff_ci_high"],
                    "ci",
                    "diff",
                    f"paired_comparison#{column}/diff",
                ),
            )

    # cosine similarity
    label = "Mean cosine of successful top-1 retrievals"
    put(
        "cosine_successful",
        label,
        "study",
        Cell(
            math.nan,
            claims["cosine_successful_low"],
            claims["cosine_successful_high"],
            "range",
            "score",
            "paper §8.2, §8.6",
        ),
    )
    for method in ("zeroshot", "finetuned"):
        frame = rankings[method]
        put(
            "cosine_successful",
            label,
            method,
            Cell(
                _conditional_mean(frame["top1_score"], frame[SUCCESS_COLUMN] > 0),
                kind="score",
                source=f"{rfile[method]}#mean(top1_score | {SUCCESS_COLUMN})",
            ),
        )
    label = "Mean cosine of the top-1 retrieval (all queries)"
    for method, values in (("zeroshot", zs), ("finetuned", ft)):
        put(
            "cosine_top1",
            label,
            method,
            _metric_cell(
                values, method, MetricSpec("cosine/top1_mean", label, "score"), results_dir
            ),
        )
    label = "Mean cosine of true pairs"
    for method, values in (("zeroshot", zs), ("finetuned", ft)):
        put(
            "cosine_true",
            label,
            method,
            _metric_cell(
                values, method, MetricSpec("cosine/true_mean", label, "score"), results_dir
            ),
        )

    # training loss
    chance_loss = math.log(batch_size) if batch_size > 0 else math.nan
    first, last = float(history["train_loss"].iloc[0]), float(history["train_loss"].iloc[-1])
    n_epochs = len(history)
    put(
        "loss_first",
        "Training loss, first epoch",
        "study",
        Cell(claims["loss_first_epoch"], kind="loss", source="paper §8.1 Table 2"),
    )
    put(
        "loss_first",
        "Training loss, first epoch",
        "finetuned",
        Cell(
            first,
            kind="loss",
            source=f"{history_path}#train_loss[epoch={int(history['epoch'].iloc[0])}]",
        ),
    )
    put(
        "loss_first",
        "Training loss, first epoch",
        "chance",
        Cell(chance_loss, kind="loss", source=f"ln(train.batch_size={batch_size})"),
    )
    put(
        "loss_last",
        "Training loss, last epoch",
        "study",
        Cell(claims["loss_last_epoch"], kind="loss", source="paper §8.1 Table 2 (epoch 5)"),
    )
    put(
        "loss_last",
        "Training loss, last epoch",
        "finetuned",
        Cell(
            last,
            kind="loss",
            source=f"{history_path}#train_loss[epoch={int(history['epoch'].iloc[-1])}]",
        ),
    )
    put(
        "loss_last",
        "Training loss, last epoch",
        "chance",
        Cell(chance_loss, kind="loss", source=f"ln(train.batch_size={batch_size})"),
    )
    study_decline = 1.0 - claims["loss_last_epoch"] / claims["loss_first_epoch"]
    put(
        "loss_change",
        "Training loss change, first → last epoch",
        "study",
        Cell(-study_decline, kind="relative", source="paper §8.1 Table 2"),
    )
    put(
        "loss_change",
        "Training loss change, first → last epoch",
        "finetuned",
        Cell(
            last / first - 1.0 if first else math.nan,
            kind="relative",
            source=f"{history_path}#train_loss",
        ),
    )
    put(
        "batch_size",
        "Training batch size",
        "study",
        Cell(claims["batch_size"], kind="count", source="paper §8.1"),
    )
    put(
        "batch_size",
        "Training batch size",
        "finetuned",
        Cell(batch_size, kind="count", source="params.yaml#train.batch_size"),
    )
    put(
        "epochs",
        "Training epochs",
        "study",
        Cell(claims["epochs"], kind="count", source="paper §8.1"),
    )
    put(
        "epochs",
        "Training epochs",
        "finetuned",
        Cell(n_epochs, kind="count", source=f"{history_path}#rows"),
    )

    # normal vs abnormal
    label = "Top-1 of normal vs abnormal studies, relative (ties broken at random)"
    put(
        "normal_vs_abnormal",
        label,
        "study",
        Cell(claims["normal_vs_abnormal_top1_relative"], kind="relative", source="paper §8.2"),
    )
    key = "paper/top1_random_ties"
    for method, values in (("zeroshot", zs), ("finetuned", ft)):
        normal, abnormal = (
            values.get(f"normal/{key}", math.nan),
            values.get(f"abnormal/{key}", math.nan),
        )
        put(
            "normal_vs_abnormal",
            label,
            method,
            Cell(
                normal / abnormal - 1.0 if abnormal > 0 else math.nan,
                kind="relative",
                source=f"{mfile[method]}#normal/{key} / abnormal/{key} - 1",
            ),
        )
    label = "Share of normal studies among successful top-1 retrievals"
    put(
        "normal_share",
        label,
        "study",
        Cell(claims["normal_share_of_successes"], source="paper §8.4"),
    )
    for method in ("zeroshot", "finetuned"):
        frame = rankings[method]
        put(
            "normal_share",
            label,
            method,
            Cell(
                _conditional_mean(frame["is_normal"].astype(float), frame[SUCCESS_COLUMN] > 0),
                source=f"{rfile[method]}#mean(is_normal | {SUCCESS_COLUMN})",
            ),
        )
    frame = rankings["finetuned"]
    put(
        "normal_share",
        label,
        "chance",
        Cell(
            float(frame["is_normal"].astype(float).mean()),
            source=f"{rfile['finetuned']}#mean(is_normal)",
        ),
    )

    table.notes += [
        "Study values as stated in the paper (section given in the CSV `source`); the study does not "
        "report absolute Top-1 accuracies. Ours: paper protocol (every test image against every test "
        "image's report, no de-duplication). Duplicated report texts (the other view of a study, common "
        "normal reports) tie with the true one, so Top-1 is given under three tie rules; a successful "
        "retrieval is one whose top-1 text equals the true text.",
        f"Chance: the contrastive loss of an untrained model is ln(batch) = ln {batch_size} = "
        f"{format_number(chance_loss, 'loss')} (the study's batch 32 gives ln 32 = {math.log(32):.2f}); "
        "Top-1: the random baseline (measured); normal share: the share of normal studies among all queries.",
        "The study's text (§8.1) also claims a 6.8% loss decline, which its own Table 2 contradicts "
        f"({study_decline:.1%}); the table uses Table 2.",
    ]
    return table


# --------------------------------------------------------------------------- rendering


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def table_to_markdown(table: Table) -> str:
    """One Markdown section: ``### title``, a pipe table, then the notes as paragraphs."""
    header = "| | " + " | ".join(_md_escape(v) for v in table.columns.values()) + " |"
    rule = "|---|" + "|".join("---:" for _ in table.columns) + "|"
    lines = [f"### {table.title}", "", header, rule]
    for row, row_label in table.rows.items():
        cells = [
            format_cell(table.cells[(row, c)]) if (row, c) in table.cells else ""
            for c in table.columns
        ]
        lines.append(f"| {_md_escape(row_label)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"*{_md_escape(note)}*\n" for note in table.notes]
    return "\n".join(lines)


def tables_to_markdown(tables: Sequence[Table], title: str = "cxrclip results") -> str:
    """The whole ``metrics.md``: a title and every table."""
    parts = [
        f"# {title}",
        "",
        "Generated by `cxrclip render-tables` from the pipeline's artifacts; "
        "every number is in `metrics.csv` with its source.",
        "",
    ]
    parts += [table_to_markdown(t) for t in tables]
    return "\n".join(parts).rstrip() + "\n"


CSV_COLUMNS = [
    "table",
    "row",
    "row_label",
    "column",
    "column_label",
    "value",
    "low",
    "high",
    "interval",
    "source",
]


def tables_to_frame(tables: Sequence[Table]) -> pd.DataFrame:
    """Tidy frame (one row per cell, full precision) with :data:`CSV_COLUMNS`."""
    records = []
    for table in tables:
        for (row, column), cell in table.cells.items():
            records.append(
                {
                    "table": table.name,
                    "row": row,
                    "row_label": table.rows[row],
                    "column": column,
                    "column_label": table.columns[column],
                    "value": cell.value,
                    "low": cell.low,
                    "high": cell.high,
                    "interval": cell.interval,
                    "source": cell.source,
                }
            )
    return pd.DataFrame.from_records(records, columns=CSV_COLUMNS)


_HTML_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 0.3em 0;font-size:0.9em}
th,td{border-bottom:1px solid #ddd;padding:0.3em 0.6em;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}
thead th{border-bottom:2px solid #555;white-space:normal;max-width:9em}
p.note{font-size:0.85em;color:#555;max-width:60em}
"""


def tables_to_html(tables: Sequence[Table], title: str = "cxrclip results") -> str:
    """Self-contained HTML page (inline CSS, no scripts) with every table; long labels wrap."""
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_HTML_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    for table in tables:
        parts.append(f"<h2>{html.escape(table.title)}</h2><table><thead><tr><th></th>")
        parts += [f"<th>{html.escape(label)}</th>" for label in table.columns.values()]
        parts.append("</tr></thead><tbody>")
        for row, row_label in table.rows.items():
            parts.append(f"<tr><td>{html.escape(row_label)}</td>")
            for column in table.columns:
                cell = table.cells.get((row, column))
                parts.append(f"<td>{html.escape(format_cell(cell)) if cell else ''}</td>")
            parts.append("</tr>")
        parts.append("</tbody></table>")
        parts += [f"<p class='note'>{html.escape(note)}</p>" for note in table.notes]
    parts.append("</body></html>")
    return "".join(parts) + "\n"


# --------------------------------------------------------------------------- orchestration


def build_tables(
    results_dir: str | Path,
    history_path: str | Path,
    batch_size: int,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    methods: Sequence[str] = METHOD_ORDER,
) -> list[Table]:
    """Every results table from the artifacts under ``results_dir`` and the training ``history_path``."""
    results = str(Path(results_dir).as_posix())
    metrics = load_metrics(results_dir, methods)
    keys = list(next(iter(metrics.values())))
    ks = metric_ks(keys)
    history = load_history(history_path)
    rankings = {m: load_rankings(results_dir, m, RANKING_COLUMNS) for m in PAIRED_METHODS}
    paired, comparison = paired_table(
        rankings[PAIRED_METHODS[0]],
        rankings[PAIRED_METHODS[1]],
        PAIRED_METHODS,
        n_boot,
        seed,
        ci,
        results,
    )
    return [
        methods_table(
            metrics,
            retrieval_specs(ks),
            "methods",
            "Image → report retrieval, every method",
            results,
            POOL_SPECS,
            ci,
        ),
        methods_table(
            metrics,
            secondary_specs(ks),
            "methods_more",
            "Report → image, label-level, text similarity and scores, every method",
            results,
            (),
            ci,
        ),
        subgroup_table(metrics, subgroup_specs(ks), results, ci),
        paired,
        study_table(
            metrics,
            rankings,
            history,
            comparison,
            batch_size,
            results,
            Path(history_path).as_posix(),
        ),
    ]


def write_tables(
    tables: Sequence[Table],
    out_md: str | Path,
    out_csv: str | Path,
    out_html: str | Path | None = None,
) -> None:
    """Write ``metrics.md``, ``metrics.csv`` (and optionally an HTML page) atomically."""
    with atomic_path(out_md) as tmp:
        tmp.write_text(tables_to_markdown(tables), encoding="utf-8")
    with atomic_path(out_csv) as tmp:
        tables_to_frame(tables).to_csv(tmp, index=False, float_format="%.17g")
    if out_html is not None:
        with atomic_path(out_html) as tmp:
            tmp.write_text(tables_to_html(tables), encoding="utf-8")
