"""Results figures from the pipeline's artifacts (PNG, Agg backend, shared style).

Each ``*_figure`` function is pure (data in, ``matplotlib.figure.Figure`` out); :func:`render_figures`
reads the artifacts and writes, into one folder:

- ``training_curves.png``: training loss per step and per epoch (chance ``ln(batch)`` and the study's
  Table 2 for reference) and the validation metrics per epoch;
- ``methods_overview.png``: headline metrics of every method with bootstrap intervals and chance;
- ``score_distributions.png``: per method, scores of true pairs vs all negatives (cosine for CLIP);
- ``embedding_map.png``: 2-D t-SNE (or UMAP) of image embeddings, normal vs abnormal, zero-shot beside
  fine-tuned;
- ``retrieval_examples.png``: test X-rays with their true report, the top-3 retrieved reports, scores and
  whether the labels match (long text wrapped, never clipped);
- ``precision_by_label.png``: label-level Precision@K per finding group for every method.

The dataset figures come from the data-summary stage (``reports/data/*.png``) and are not redrawn here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxrclip.errors import CxrclipError
from cxrclip.reporting import tables as T
from cxrclip.reporting.style import (
    CLASS_COLORS,
    MATCH_COLOR,
    METHOD_ORDER,
    MISMATCH_COLOR,
    PAIR_COLORS,
    REFERENCE_COLOR,
    figure_style,
    method_color,
    method_label,
    new_figure,
    save_figure,
    wrap,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

CLIP_METHODS: tuple[str, ...] = ("zeroshot", "finetuned")
FIGURE_NAMES: tuple[str, ...] = (
    "training_curves",
    "methods_overview",
    "score_distributions",
    "embedding_map",
    "retrieval_examples",
    "precision_by_label",
)
#: At most this many negative scores per method go into a histogram (uniform sample, seeded).
MAX_NEGATIVES = 200_000


# --------------------------------------------------------------------------- training curves


def training_curves_figure(
    history: pd.DataFrame, steps: pd.DataFrame | None, batch_size: int
) -> Figure:
    """Loss (per step, per epoch) and validation metrics per epoch.

    ``history``: one row per epoch (``epoch``, ``train_loss``, ``val/...`` columns); ``steps``: one row
    per optimizer step (``step``, ``loss``, optional ``epoch``); ``batch_size``: for the chance level
    ``ln(batch_size)`` of the symmetric contrastive loss.
    """
    val_columns = [
        c
        for c in history.columns
        if c.startswith("val/") and pd.api.types.is_numeric_dtype(history[c])
    ]
    fig = new_figure(12, 4.2)
    ax_loss, ax_val = fig.subplots(1, 2)
    epochs = history["epoch"].to_numpy(np.float64)
    if steps is not None and len(steps):
        x = _step_positions(steps)
        ax_loss.plot(
            x,
            steps["loss"].to_numpy(np.float64),
            color=method_color("finetuned"),
            alpha=0.35,
            lw=0.8,
            label="loss per step",
        )
    ax_loss.plot(
        epochs - 0.5,
        history["train_loss"],
        "o-",
        color=method_color("finetuned"),
        label="mean loss per epoch (ours)",
    )
    study_losses = np.asarray(T.STUDY_LOSS_PER_EPOCH)
    ax_loss.plot(
        np.arange(1, len(study_losses) + 1) - 0.5,
        study_losses,
        "s--",
        color=REFERENCE_COLOR,
        alpha=0.8,
        label=f"study, batch {int(T.STUDY_CLAIMS['batch_size'])} (Table 2)",
    )
    if batch_size > 0:
        chance = math.log(batch_size)
        ax_loss.axhline(
            chance,
            color=REFERENCE_COLOR,
            ls=":",
            lw=1.2,
            label=f"chance: ln {batch_size} = {chance:.2f}",
        )
    ax_loss.set(
        title="Contrastive training loss", xlabel="epoch", ylabel="loss (symmetric cross-entropy)"
    )
    ax_loss.set_xlim(0, max(float(epochs.max()) if len(epochs) else 1.0, 5.0))
    ax_loss.legend(loc="best")
    if val_columns:
        for column in val_columns:
            ax_val.plot(epochs, history[column], "o-", label=column.removeprefix("val/"))
        ax_val.set(
            title="Validation retrieval per epoch", xlabel="epoch", ylabel="value", ylim=(0, None)
        )
        ax_val.legend(loc="best")
        ax_val.set_xticks(epochs)
    else:
        ax_val.text(
            0.5,
            0.5,
            "no validation metrics\n(empty validation split)",
            ha="center",
            va="center",
            transform=ax_val.transAxes,
        )
        ax_val.set_title("Validation retrieval per epoch")
    return fig


def _step_positions(steps: pd.DataFrame) -> np.ndarray:
    """x position (in epochs) of every step: epoch e's n steps spread over (e-1, e]."""
    if "epoch" not in steps.columns:
        step = steps["step"].to_numpy(np.float64)
        return step / max(step.max(), 1.0)
    out = np.empty(len(steps), dtype=np.float64)
    epochs = steps["epoch"].to_numpy()
    for epoch in np.unique(epochs):
        idx = np.flatnonzero(epochs == epoch)
        out[idx] = epoch - 1 + (np.arange(1, len(idx) + 1) / len(idx))
    return out


# --------------------------------------------------------------------------- methods overview


def overview_figure(
    metrics: Mapping[str, Mapping[str, float]], specs: Sequence[T.MetricSpec], ci: float = 0.95
) -> Figure:
    """Grouped bars: one group per metric in ``specs``, one bar per method with its bootstrap interval;
    a black tick marks the chance level where the metrics JSON has one."""
    methods = list(metrics)
    fig = new_figure(max(8.0, 1.6 * len(specs) + 2), 4.4)
    ax = fig.subplots()
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(specs))
    for i, method in enumerate(methods):
        values = metrics[method]
        heights = np.array([values.get(s.key, np.nan) for s in specs], dtype=np.float64)
        low = np.array([values.get(f"{s.key}_ci_low", np.nan) for s in specs], dtype=np.float64)
        high = np.array([values.get(f"{s.key}_ci_high", np.nan) for s in specs], dtype=np.float64)
        errors = np.vstack([np.clip(heights - low, 0, None), np.clip(high - heights, 0, None)])
        errors = np.nan_to_num(errors)
        offset = (i - (len(methods) - 1) / 2) * width
        ax.bar(
            x + offset,
            np.nan_to_num(heights),
            width,
            yerr=errors,
            capsize=2,
            color=method_color(method),
            label=method_label(method),
            error_kw={"lw": 0.8},
        )
    reference = metrics[methods[0]] if methods else {}
    chance_drawn = False
    for j, spec in enumerate(specs):
        chance = reference.get(f"{spec.key}_chance")
        if chance is not None and math.isfinite(chance):
            ax.hlines(
                chance,
                j - 0.45,
                j + 0.45,
                color="black",
                lw=1.5,
                label=None if chance_drawn else "chance (random ranking)",
            )
            chance_drawn = True
    ax.set_xticks(x, [wrap(s.label, 14) for s in specs])
    ax.set(ylabel="fraction of test queries", ylim=(0, 1.0))
    ax.set_title(f"Retrieval at a glance (test split; error bars: {ci:.0%} bootstrap intervals)")
    fig.legend(loc="outside right upper")
    return fig


# --------------------------------------------------------------------------- score distributions


def split_scores(
    scores: np.ndarray, true_idx: np.ndarray, max_negatives: int = MAX_NEGATIVES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of true pairs (n_queries,) and of negatives (all other entries, at most ``max_negatives``,
    uniform seeded sample) from ``scores`` (n_queries, n_candidates)."""
    scores = np.asarray(scores, dtype=np.float64)
    rows = np.arange(scores.shape[0])
    true = scores[rows, true_idx]
    mask = np.ones(scores.shape, dtype=bool)
    mask[rows, true_idx] = False
    negatives = scores[mask]
    if negatives.size > max_negatives:
        negatives = np.random.default_rng(seed).choice(negatives, size=max_negatives, replace=False)
    return true, negatives


def score_distributions_figure(
    scores_by_method: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> Figure:
    """One panel per method: density histograms of true-pair vs negative scores, means marked.

    ``scores_by_method``: ``{method: (true (n_queries,), negatives (m,))}``.
    """
    methods = list(scores_by_method)
    n_cols = min(3, max(len(methods), 1))
    n_rows = max(1, -(-len(methods) // n_cols))
    fig = new_figure(4.3 * n_cols, 3.4 * n_rows)
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, squeeze=False)).ravel()
    for ax in axes[len(methods) :]:
        ax.set_axis_off()
    for ax, method in zip(axes, methods, strict=False):
        true, negatives = scores_by_method[method]
        lo = float(min(true.min(initial=np.inf), negatives.min(initial=np.inf)))
        hi = float(max(true.max(initial=-np.inf), negatives.max(initial=-np.inf)))
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
            lo, hi = lo - 0.5 if math.isfinite(lo) else 0.0, hi + 0.5 if math.isfinite(hi) else 1.0
        bins = np.linspace(lo, hi, 41)
        for name, values in (("negative", negatives), ("true", true)):
            if values.size:
                ax.hist(
                    values,
                    bins=bins,
                    density=True,
                    alpha=0.55,
                    color=PAIR_COLORS[name],
                    label=f"{'true pairs' if name == 'true' else 'negatives'} (mean {values.mean():.3f})",
                )
                ax.axvline(values.mean(), color=PAIR_COLORS[name], ls="--", lw=1.2)
        kind = "cosine similarity" if method in CLIP_METHODS else "score"
        ax.set(title=method_label(method), xlabel=kind, ylabel="density")
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle("Scores of true image–report pairs vs negatives (test split)", fontweight="bold")
    return fig


# --------------------------------------------------------------------------- embedding map


def project_2d(features: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """2-D coordinates (n, 2) of ``features`` (n, D): t-SNE (sklearn, PCA init, fixed ``seed``) or UMAP
    (only when ``umap-learn`` is installed)."""
    x = np.asarray(features, dtype=np.float32)
    n = x.shape[0]
    if n < 3:
        return np.column_stack([np.arange(n, dtype=np.float64), np.zeros(n)])
    if method == "umap":
        try:
            import umap  # type: ignore[import-not-found]
        except ImportError as exc:
            raise CxrclipError(
                "UMAP projection needs the umap-learn package; use --projection tsne"
            ) from exc
        return np.asarray(
            umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, n - 1)).fit_transform(
                x
            )
        )
    if method != "tsne":
        raise CxrclipError(f"unknown projection '{method}' (tsne or umap)")
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
    return TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        random_state=seed,
        max_iter=1000,
        metric="cosine",
    ).fit_transform(x)


def separation_score(features: np.ndarray, is_normal: np.ndarray) -> float:
    """Silhouette (cosine, full dimension) of normal vs abnormal; NaN when a class is missing."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(is_normal, dtype=bool)
    if labels.all() or not labels.any() or len(labels) < 3:
        return math.nan
    return float(silhouette_score(np.asarray(features, dtype=np.float64), labels, metric="cosine"))


def embedding_map_figure(
    maps: Mapping[str, tuple[np.ndarray, np.ndarray, float]], projection: str = "tsne"
) -> Figure:
    """Side-by-side scatter plots, one per method, coloured normal vs abnormal.

    ``maps``: ``{method: (coords (n, 2), is_normal bool (n,), silhouette)}``.
    """
    methods = list(maps)
    fig = new_figure(5.2 * max(len(methods), 1), 5.0)
    axes = np.atleast_1d(fig.subplots(1, max(len(methods), 1), squeeze=False)).ravel()
    name = "t-SNE" if projection == "tsne" else projection.upper()
    for ax, method in zip(axes, methods, strict=False):
        coords, is_normal, silhouette = maps[method]
        for label, mask in (("abnormal", ~is_normal), ("normal", is_normal)):
            ax.scatter(
                coords[mask, 0],
                coords[mask, 1],
                s=10,
                alpha=0.7,
                color=CLASS_COLORS[label],
                label=f"{label} (n = {int(mask.sum())})",
                edgecolors="none",
            )
        ax.set_title(f"{method_label(method)}\nsilhouette normal/abnormal = {silhouette:.3f}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{name} 1")
        ax.set_ylabel(f"{name} 2")
        ax.legend(loc="best", markerscale=1.5)
    fig.suptitle(f"{name} of test image embeddings: normal vs abnormal", fontweight="bold")
    return fig


# --------------------------------------------------------------------------- retrieval examples


def candidate_labels(
    rankings: pd.DataFrame, query_labels: Sequence[frozenset[str]]
) -> dict[int, frozenset[str]]:
    """Label set of every candidate index: the labels of the first query (pair order) whose true text it is
    (the evaluation's convention). ``query_labels`` is aligned with ``rankings`` rows."""
    ordered = np.argsort(rankings["pair_id"].to_numpy(), kind="stable")
    out: dict[int, frozenset[str]] = {}
    true_idx = rankings["true_idx"].to_numpy()
    for row in ordered:
        out.setdefault(int(true_idx[row]), query_labels[row])
    return out


def query_label_sets(
    rankings: pd.DataFrame, reports: pd.DataFrame | None
) -> tuple[list[frozenset[str]], str]:
    """Label set of each rankings row and the criterion used: MeSH label groups
    (:func:`cxrclip.evaluation.labels.mesh_to_labels`) when ``reports`` is given, else normal/abnormal."""
    if reports is not None and {"report_id", "mesh_major"} <= set(reports.columns):
        from cxrclip.evaluation.labels import mesh_to_labels

        mesh = reports.drop_duplicates("report_id").set_index("report_id")["mesh_major"]
        sets = []
        for rid in rankings["report_id"].astype(str):
            terms = mesh.get(rid)
            sets.append(mesh_to_labels([] if terms is None else list(terms)))
        return sets, "MeSH label groups"
    return [
        frozenset({"normal" if n else "abnormal"}) for n in rankings["is_normal"].astype(bool)
    ], "normal/abnormal"


def pick_examples(rankings: pd.DataFrame, n: int = 6, seed: int = 0) -> list[int]:
    """Row positions of ``n`` queries: about half normal, half abnormal, a mix of top-1 hits and misses,
    drawn with a fixed ``seed``; returned in pair order."""
    rng = np.random.default_rng(seed)
    hits = rankings["true_rank"].to_numpy() == 1
    normal = rankings["is_normal"].to_numpy(bool)
    strata = [normal & hits, normal & ~hits, ~normal & hits, ~normal & ~hits]
    per = max(1, n // len(strata))
    chosen: list[int] = []
    for mask in strata:
        idx = np.flatnonzero(mask)
        chosen += list(rng.choice(idx, size=min(per, len(idx)), replace=False))
    rest = np.setdiff1d(np.arange(len(rankings)), chosen)
    if len(chosen) < n and len(rest):
        chosen += list(rng.choice(rest, size=min(n - len(chosen), len(rest)), replace=False))
    chosen = chosen[:n]
    return sorted(chosen, key=lambda r: int(rankings["pair_id"].iloc[r]))


def retrieval_examples_figure(
    rankings: pd.DataFrame,
    images: Sequence[np.ndarray],
    rows: Sequence[int],
    query_labels: Sequence[frozenset[str]],
    criterion: str,
    method: str = "finetuned",
    width: int = 110,
) -> Figure:
    """One row per example: the X-ray, then its true report and the top-3 retrieved reports with scores.

    ``images``: one uint8 (S, S) array per entry of ``rows`` (positions in ``rankings``); a retrieved
    report is marked ✓ when its label set intersects the query's under ``criterion`` (✗ otherwise) and
    ``= true report`` when it is the true text. Text is wrapped to ``width`` characters, never clipped.
    """
    cand_labels = candidate_labels(rankings, query_labels)
    blocks: list[list[tuple[str, str, str]]] = []  # per example: (text, colour, weight)
    for row in rows:
        r = rankings.iloc[row]
        labels = query_labels[row]
        lines: list[tuple[str, str, str]] = [
            (
                wrap(
                    f"pair {int(r['pair_id'])} · {r.get('image_id', '')} · true rank {int(r['true_rank'])} · "
                    f"labels: {', '.join(sorted(labels)) or 'none'}",
                    width,
                ),
                "#333333",
                "bold",
            ),
            (wrap(f"TRUE: {r['true_text']}", width), "black", "normal"),
        ]
        top_idx = list(r["top10_idx"])[:3]
        top_scores = list(r["top10_scores"])[:3]
        for rank, (text, idx, score) in enumerate(
            zip(list(r["top_texts"])[:3], top_idx, top_scores, strict=False), 1
        ):
            match = bool(labels & cand_labels.get(int(idx), frozenset()))
            mark = "✓" if match else "✗"
            same = "  = true report" if int(idx) == int(r["true_idx"]) else ""
            lines.append(
                (
                    wrap(f"{rank}. {float(score):.3f} {mark}{same}  {text}", width),
                    MATCH_COLOR if match else MISMATCH_COLOR,
                    "normal",
                )
            )
        blocks.append(lines)
    font_pt, gap_pt = 8.5, 4.0
    line_pt = font_pt * 1.25  # matplotlib's default line spacing (1.2) plus a little air
    block_pt = [sum((t.count("\n") + 1) * line_pt + gap_pt for t, _, _ in b) for b in blocks]
    heights = [max(2.2, pts / 72.0 + 0.25) for pts in block_pt]  # inches; the X-ray needs ~2 in
    title_in = 0.55
    fig_height = sum(heights) + title_in
    fig = new_figure(12.5, fig_height, layout=None)
    grid = fig.add_gridspec(
        max(len(rows), 1),
        2,
        width_ratios=[1, 4.2],
        height_ratios=heights or [1],
        hspace=0.08,
        wspace=0.03,
        left=0.01,
        right=0.99,
        bottom=0.01,
        top=1 - title_in / fig_height,
    )
    for i, (image, lines) in enumerate(zip(images, blocks, strict=True)):
        ax_img = fig.add_subplot(grid[i, 0])
        ax_img.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax_img.set_xticks([])
        ax_img.set_yticks([])
        ax_img.grid(False)
        status = "normal" if bool(rankings["is_normal"].iloc[rows[i]]) else "abnormal"
        ax_img.set_xlabel(status, color=CLASS_COLORS[status], fontsize=9)
        ax_txt = fig.add_subplot(grid[i, 1])
        ax_txt.set_axis_off()
        offset = 0.0  # points below the top of the text panel
        for text, colour, weight in lines:
            ax_txt.annotate(
                text,
                xy=(0.0, 1.0),
                xycoords="axes fraction",
                xytext=(0.0, -offset),
                textcoords="offset points",
                va="top",
                ha="left",
                fontsize=font_pt,
                color=colour,
                fontweight=weight,
                annotation_clip=False,
            )
            offset += (text.count("\n") + 1) * line_pt + gap_pt
    if not rows:
        ax = fig.add_subplot(grid[0, :])
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no test queries", ha="center", va="center")
    fig.suptitle(
        f"{method_label(method)}: test X-rays, true report and top-3 retrieved reports "
        f"(score, ✓/✗ = {criterion} match)",
        fontweight="bold",
        y=1 - 0.15 / fig_height,
        va="top",
    )
    return fig


# --------------------------------------------------------------------------- precision by label


def precision_by_label(
    rankings: Mapping[str, pd.DataFrame], query_labels: Sequence[frozenset[str]], k: int
) -> pd.DataFrame:
    """Mean per-query label P@k per finding group and method, with the group's query count and chance.

    Returns columns ``label``, ``n_queries``, ``chance`` and one column per method (NaN-free groups only).
    ``query_labels`` is aligned with every rankings frame (same pair order).
    """
    from cxrclip.evaluation.labels import LABEL_GROUPS

    column = f"p{k}_label"
    present = set().union(*query_labels) if len(query_labels) else set()
    groups = [g for g in LABEL_GROUPS if g in present] + sorted(present - set(LABEL_GROUPS))
    rows = []
    for label in groups:
        mask = np.array([label in s for s in query_labels], dtype=bool)
        if not mask.any():
            continue
        first = next(iter(rankings.values()))
        row = {
            "label": label,
            "n_queries": int(mask.sum()),
            "chance": float(first[f"{column}_chance"].to_numpy(np.float64)[mask].mean())
            if f"{column}_chance" in first.columns
            else math.nan,
        }
        for method, frame in rankings.items():
            row[method] = float(frame[column].to_numpy(np.float64)[mask].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def precision_by_label_figure(
    tables_by_k: Mapping[int, pd.DataFrame], methods: Sequence[str]
) -> Figure:
    """One panel per K: horizontal grouped bars of label P@K per finding group and method, chance ticks."""
    ks = list(tables_by_k)
    first = next(iter(tables_by_k.values())) if ks else pd.DataFrame()
    n_groups = max(len(first), 1)
    fig = new_figure(4.6 * max(len(ks), 1), 0.45 * n_groups * max(len(methods), 1) / 2.5 + 2.0)
    axes = np.atleast_1d(fig.subplots(1, max(len(ks), 1), squeeze=False, sharey=True)).ravel()
    height = 0.8 / max(len(methods), 1)
    for ax, k in zip(axes, ks, strict=False):
        table = tables_by_k[k]
        y = np.arange(len(table))
        for i, method in enumerate(methods):
            offset = (i - (len(methods) - 1) / 2) * height
            ax.barh(
                y + offset,
                table[method],
                height,
                color=method_color(method),
                label=method_label(method) if k == ks[0] else None,
            )
        for j, chance in enumerate(table["chance"]):
            if math.isfinite(chance):
                ax.vlines(
                    chance,
                    j - 0.45,
                    j + 0.45,
                    color="black",
                    lw=1.5,
                    label="chance" if (k == ks[0] and j == 0) else None,
                )
        ax.set_yticks(
            y,
            [f"{lab} (n = {n})" for lab, n in zip(table["label"], table["n_queries"], strict=True)],
        )
        ax.invert_yaxis()
        ax.set(title=f"Label Precision@{k}", xlabel="precision", xlim=(0, 1))
    if ks:
        fig.legend(loc="outside lower center", ncols=min(len(methods) + 1, 6))
    fig.suptitle(
        "Label-level Precision@K per finding group (query's MeSH groups)", fontweight="bold"
    )
    return fig


# --------------------------------------------------------------------------- orchestration


def _read_parquet(path: str | Path, what: str, stage: str) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise CxrclipError(f"{what} not found: {path} (run `{stage}` first)")
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise CxrclipError(f"cannot read {what} {path}: {exc}") from exc


def _load_npz(path: Path, keys: Sequence[str], stage: str) -> dict[str, np.ndarray]:
    if not path.exists():
        raise CxrclipError(f"file not found: {path} (run `{stage}` first)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise CxrclipError(f"{path} lacks array(s) {missing}")
            return {k: npz[k] for k in keys}
    except (OSError, ValueError) as exc:
        raise CxrclipError(f"cannot read {path}: {exc}") from exc


def _load_cache(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise CxrclipError(f"image cache not found: {path} (run `cxrclip verify-images` first)")
    try:
        cache = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise CxrclipError(f"cannot read image cache {path}: {exc}") from exc
    if cache.ndim != 3 or cache.dtype != np.uint8:
        raise CxrclipError(
            f"image cache {path} must be uint8 (N, S, S), got {cache.dtype} {cache.shape}"
        )
    return cache


def require_inputs(results_dir: Path, methods: Sequence[str]) -> None:
    """Fail fast, naming the file and the stage that writes it, when a per-method artifact is missing."""
    for method in methods:
        needed = [
            ("metrics.json", "cxrclip evaluate"),
            ("rankings.parquet", "cxrclip evaluate"),
            ("scores.npz", "cxrclip score"),
        ]
        if method in CLIP_METHODS:
            needed.append(("embeddings.npz", "cxrclip score"))
        for name, stage in needed:
            path = results_dir / method / name
            if not path.exists():
                raise CxrclipError(
                    f"{path} not found (run `{stage} --method {method}` first); "
                    "every method's results are needed for the figures"
                )


def render_figures(
    results_dir: str | Path,
    history_path: str | Path,
    steps_path: str | Path | None,
    pairs_path: str | Path,
    cache_path: str | Path,
    out_dir: str | Path,
    batch_size: int,
    reports_path: str | Path | None = None,
    methods: Sequence[str] = METHOD_ORDER,
    projection: str = "tsne",
    seed: int = 0,
    n_examples: int = 6,
    ci: float = 0.95,
) -> list[Path]:
    """Write every figure of :data:`FIGURE_NAMES` into ``out_dir``; returns the written paths.

    Inputs are the pipeline artifacts (see the module docstring); ``reports_path`` (reports.parquet)
    gives the MeSH label groups of the retrieval examples and the per-label figure (without it the
    examples use normal/abnormal, and the per-label figure shows normal/abnormal only).
    """
    from cxrclip.evaluation.candidates import load_scores

    results = Path(results_dir)
    require_inputs(results, methods)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = T.load_metrics(results, methods)
    ks = T.metric_ks(list(next(iter(metrics.values()))))
    history = T.load_history(history_path)
    steps = None
    if steps_path is not None:
        steps_file = Path(steps_path)
        if not steps_file.exists():
            raise CxrclipError(
                f"training steps not found: {steps_file} (run `cxrclip finetune` first)"
            )
        steps = pd.read_csv(steps_file)
        if not {"step", "loss"} <= set(steps.columns):
            raise CxrclipError(f"{steps_file} lacks columns step/loss")
    pairs = _read_parquet(pairs_path, "pairs table", "cxrclip build-splits")
    reports = (
        _read_parquet(reports_path, "reports table", "cxrclip parse-reports")
        if reports_path
        else None
    )
    cache = _load_cache(cache_path)
    needed = (
        "pair_id",
        "report_id",
        "is_normal",
        "true_idx",
        "true_rank",
        "top10_idx",
        "top10_scores",
        "true_text",
        "top_texts",
    )
    rankings = {
        m: T.load_rankings(results, m, needed)
        .sort_values("pair_id", kind="stable")
        .reset_index(drop=True)
        for m in methods
    }
    reference = next(iter(rankings.values()))["pair_id"].to_numpy()
    for method, frame in rankings.items():
        if not np.array_equal(frame["pair_id"].to_numpy(), reference):
            raise CxrclipError(
                f"{T.rankings_path(results, method)} holds other queries than "
                f"{T.rankings_path(results, methods[0])} (evaluated on another split?)"
            )
    written: list[Path] = []
    bar = tqdm(FIGURE_NAMES, desc="figures", unit="fig")
    for name in bar:
        bar.set_postfix_str(name)
        path = out / f"{name}.png"
        with figure_style():
            if name == "training_curves":
                fig = training_curves_figure(history, steps, batch_size)
            elif name == "methods_overview":
                fig = overview_figure(metrics, T.overview_specs(ks), ci)
            elif name == "score_distributions":
                by_method = {}
                for method in methods:
                    data = load_scores(results / method / "scores.npz")
                    by_method[method] = split_scores(
                        data["scores"], data["pair_text_idx"], seed=seed
                    )
                fig = score_distributions_figure(by_method)
            elif name == "embedding_map":
                normal_of = pairs.set_index("pair_id")["is_normal"].astype(bool)
                maps = {}
                for method in (m for m in CLIP_METHODS if m in methods):
                    emb = _load_npz(
                        results / method / "embeddings.npz",
                        ("image", "pair_ids"),
                        f"cxrclip score --method {method}",
                    )
                    missing = set(emb["pair_ids"].tolist()) - set(normal_of.index)
                    if missing:
                        raise CxrclipError(
                            f"{results / method / 'embeddings.npz'} holds pair ids absent from "
                            f"{pairs_path}, e.g. {sorted(missing)[:3]} (stale embeddings?)"
                        )
                    is_normal = normal_of.loc[emb["pair_ids"]].to_numpy(bool)
                    coords = project_2d(emb["image"], projection, seed)
                    maps[method] = (coords, is_normal, separation_score(emb["image"], is_normal))
                fig = embedding_map_figure(maps, projection)
            elif name == "retrieval_examples":
                method = "finetuned" if "finetuned" in rankings else methods[-1]
                frame = rankings[method]
                labels, criterion = query_label_sets(frame, reports)
                rows = pick_examples(frame, n_examples, seed)
                cache_of = pairs.set_index("pair_id")["cache_index"]
                images = [
                    np.asarray(cache[int(cache_of[int(frame["pair_id"].iloc[r])])]) for r in rows
                ]
                fig = retrieval_examples_figure(frame, images, rows, labels, criterion, method)
            else:  # precision_by_label
                frame = next(iter(rankings.values()))
                labels, _ = query_label_sets(frame, reports)
                by_k = {
                    k: precision_by_label(rankings, labels, k)
                    for k in ks
                    if f"p{k}_label" in frame.columns
                }
                fig = precision_by_label_figure(by_k, list(methods))
            written.append(save_figure(fig, path))
    return written
