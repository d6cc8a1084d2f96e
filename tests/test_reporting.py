"""Results tables and figures: built from a small results tree made by the real evaluation code."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cxrclip.cli import main as cli_main
from cxrclip.evaluation.candidates import build_candidates, save_scores, scores_dict, sort_pairs
from cxrclip.evaluation.embed import save_npz
from cxrclip.reporting import figures as F
from cxrclip.reporting import tables as T
from cxrclip.reporting.style import METHOD_ORDER, figure_style, wrap

ROOT = Path(__file__).resolve().parents[1]
BATCH = 8
CACHE_SIDE = 64
LONG_REPORT = (
    "Stable cardiomegaly with tortuous calcified thoracic aorta. Interval development of a moderate right "
    "pleural effusion with adjacent basilar airspace opacity that may represent atelectasis or pneumonia in "
    "the appropriate clinical setting; recommend follow-up radiographs after treatment to document "
    "resolution and exclude an underlying mass lesion supercalifragilisticexpialidociouslylongtoken."
)
ABNORMAL_TEXTS = [
    ("Cardiomegaly without acute pulmonary edema.", ["Cardiomegaly/mild"]),
    ("Small left pleural effusion.", ["Pleural Effusion/left/small"]),
    ("Right upper lobe calcified granuloma.", ["Calcified Granuloma/lung/upper lobe/right"]),
    (
        "Patchy opacity in the left lower lobe, pneumonia.",
        ["Opacity/lung/base/left/patchy", "Pneumonia"],
    ),
    (
        "Hyperinflated lungs consistent with emphysema.",
        ["Pulmonary Emphysema", "Lung/hyperdistention"],
    ),
    (
        "Degenerative changes of the thoracic spine.",
        ["Spine/degenerative", "Thoracic Vertebrae/degenerative"],
    ),
    ("Pacemaker in place, lungs clear.", ["Pacemaker, Artificial"]),
    (LONG_REPORT, ["Cardiomegaly", "Pleural Effusion/right", "Opacity/lung/base"]),
]
NORMAL_TEXTS = [
    "No acute cardiopulmonary abnormality.",
    "Heart size normal. Lungs are clear.",
    "No active disease.",
]


def make_data(n_reports: int = 80, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Reports (report_id, mesh_major, indication, text), pairs (contract columns) and a uint8 cache."""
    rng = np.random.default_rng(seed)
    reports, pairs = [], []
    for r in range(n_reports):
        normal = r % 2 == 0
        if normal:
            text, mesh = NORMAL_TEXTS[r % len(NORMAL_TEXTS)], ["normal"]
        else:
            text, mesh = ABNORMAL_TEXTS[(r // 2) % len(ABNORMAL_TEXTS)]
            text = f"{text} Finding {r}." if r % 3 else text
        split = (
            "test"
            if r % 2 == 0 and r % 4 == 0 or r % 5 == 1
            else ("val" if r % 7 == 3 else "train")
        )
        rid = f"CXR{r + 1}"
        reports.append(
            {
                "report_id": rid,
                "mesh_major": mesh,
                "indication": "cough" if r % 3 else "",
                "text": text,
                "is_normal": normal,
            }
        )
        for view in ("frontal", "lateral")[: 2 if r % 3 == 0 else 1]:
            idx = len(pairs)
            pairs.append(
                {
                    "pair_id": idx,
                    "image_id": f"{rid}_IM-{idx:04d}",
                    "report_id": rid,
                    "cache_index": idx,
                    "view": view,
                    "split": split,
                    "is_normal": normal,
                    "text": text,
                }
            )
    grid = np.add.outer(np.arange(CACHE_SIDE), np.arange(CACHE_SIDE)).astype(np.float64)
    cache = np.stack(
        [(grid * (1 + i % 3) + rng.normal(0, 20, grid.shape)) % 256 for i in range(len(pairs))]
    )
    return pd.DataFrame(reports), pd.DataFrame(pairs), cache.astype(np.uint8)


def clip_like_scores(pairs_test: pd.DataFrame, signal: float, seed: int) -> tuple[dict, dict]:
    """Cosine scores and embeddings where images sit ``signal`` closer to their true text."""
    candidates = build_candidates(pairs_test)
    rng = np.random.default_rng(seed)
    dim = 16
    text = rng.normal(size=(candidates.n_candidates, dim))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    normal = sort_pairs(pairs_test)["is_normal"].to_numpy(bool)
    image = signal * text[candidates.pair_text_idx] + rng.normal(size=(len(normal), dim))
    image[:, 0] += np.where(normal, 1.5, -1.5) * signal
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    scores = scores_dict((image @ text.T).astype(np.float32), candidates)
    embeddings = {
        "image": image.astype(np.float32),
        "text": text.astype(np.float32),
        "pair_ids": candidates.pair_ids,
    }
    return scores, embeddings


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder with data, every method's scores evaluated by `cxrclip evaluate`, and history."""
    root = tmp_path_factory.mktemp("reporting")
    reports, pairs, cache = make_data()
    (root / "data").mkdir()
    reports.to_parquet(root / "data/reports.parquet", index=False)
    pairs.to_parquet(root / "data/pairs.parquet", index=False)
    np.save(root / "data/cache.npy", cache)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["eval"]["bootstrap"] = 200
    params["train"]["batch_size"] = BATCH
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    test = pairs[pairs["split"] == "test"]
    candidates = build_candidates(test)
    rng = np.random.default_rng(1)
    baseline_scores = {
        "random": rng.random((len(test), candidates.n_candidates)),
        "tfidf_prior": np.tile(rng.random(candidates.n_candidates), (len(test), 1)),
        "tfidf_indication": rng.random((len(test), candidates.n_candidates)) * 0.5,
    }
    for method in METHOD_ORDER:
        out = root / "results" / method
        out.mkdir(parents=True)
        if method in baseline_scores:
            save_scores(
                out / "scores.npz",
                scores_dict(baseline_scores[method].astype(np.float32), candidates),
            )
        else:
            scores, embeddings = clip_like_scores(
                test, 0.9 if method == "zeroshot" else 2.0, seed=3
            )
            save_scores(out / "scores.npz", scores)
            save_npz(out / "embeddings.npz", embeddings)
        code = cli_main(
            [
                "evaluate",
                "--params",
                str(root / "params.yaml"),
                "--method",
                method,
                "--scores",
                str(out / "scores.npz"),
                "--pairs",
                str(root / "data/pairs.parquet"),
                "--reports",
                str(root / "data/reports.parquet"),
                "--out",
                str(out / "metrics.json"),
                "--rankings-out",
                str(out / "rankings.parquet"),
                "--no-mlflow",
            ]
        )
        assert code == 0
    models = root / "models"
    models.mkdir()
    epochs = np.arange(1, 4)
    pd.DataFrame(
        {
            "epoch": epochs,
            "phase": ["frozen", "full", "full"],
            "train_loss": [2.05, 1.80, 1.62],
            "lr": [1e-5] * 3,
            "val/report/i2t_R@1": [0.1, 0.2, 0.25],
            "val/report/i2t_R@5": [0.3, 0.45, 0.5],
            "val/label/P@5": [0.4, 0.5, 0.55],
        }
    ).to_csv(models / "history.csv", index=False)
    steps = np.arange(1, 13)
    pd.DataFrame(
        {
            "step": steps,
            "epoch": (steps - 1) // 4 + 1,
            "loss": 2.1 - 0.04 * steps + 0.05 * np.sin(steps),
            "lr": 1e-5,
        }
    ).to_csv(models / "steps.csv", index=False)
    return root


def render_tables_cli(project: Path, *extra: str) -> int:
    return cli_main(
        [
            "render-tables",
            "--params",
            str(project / "params.yaml"),
            "--results-dir",
            str(project / "results"),
            "--history",
            str(project / "models/history.csv"),
            "--out-md",
            str(project / "reports/metrics.md"),
            "--out-csv",
            str(project / "reports/metrics.csv"),
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def rendered_tables(project: Path) -> Path:
    assert render_tables_cli(project, "--out-html", str(project / "reports/metrics.html")) == 0
    return project / "reports"


@pytest.fixture(scope="module")
def rendered_figures(project: Path) -> Path:
    code = cli_main(
        [
            "render-figures",
            "--params",
            str(project / "params.yaml"),
            "--results-dir",
            str(project / "results"),
            "--history",
            str(project / "models/history.csv"),
            "--steps",
            str(project / "models/steps.csv"),
            "--pairs",
            str(project / "data/pairs.parquet"),
            "--cache",
            str(project / "data/cache.npy"),
            "--reports",
            str(project / "data/reports.parquet"),
            "--out-dir",
            str(project / "reports/figures"),
        ]
    )
    assert code == 0
    return project / "reports/figures"


def metrics_of(project: Path, method: str) -> dict[str, float]:
    raw = json.loads((project / "results" / method / "metrics.json").read_text())
    return {k: (math.nan if v is None else float(v)) for k, v in raw.items()}


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def markdown_table(md: str, title: str) -> pd.DataFrame:
    """The pipe table under ``### title`` as strings (first column = row label)."""
    lines = md.split(f"### {title}\n", 1)[1].strip().splitlines()
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append(line)
    split = [[c.strip() for c in row.strip().strip("|").split(" | ")] for row in rows]
    header, body = split[0], split[2:]
    return pd.DataFrame(body, columns=["row", *header[1:]]).set_index("row")


# --------------------------------------------------------------------------- tables


def test_csv_numbers_equal_the_metrics_json_values_and_intervals(project, rendered_tables):
    csv = pd.read_csv(rendered_tables / "metrics.csv")
    from_json = csv[
        csv["source"].str.contains(r"metrics\.json#", regex=True)
        & ~csv["source"].str.contains(" ", regex=False)
    ]
    assert len(from_json) >= 5 * 20  # every method, every headline column
    for _, row in from_json.iterrows():
        file, key = row["source"].split("#")
        method = Path(file).parent.name
        metrics = metrics_of(project, method)
        assert same(row["value"], metrics[key]), (method, key)
        if row["interval"] == "ci":
            assert (
                row["low"] == metrics[f"{key}_ci_low"] and row["high"] == metrics[f"{key}_ci_high"]
            ), (method, key)
        elif not key.endswith("_chance") and not key.startswith(
            ("pool/", "normal/pool", "abnormal/pool")
        ):
            assert f"{key}_ci_low" not in metrics or math.isnan(metrics[f"{key}_ci_low"]), (
                method,
                key,
            )


def test_markdown_methods_table_has_one_row_per_method_with_json_values(project, rendered_tables):
    md = (rendered_tables / "metrics.md").read_text()
    table = markdown_table(md, "Image → report retrieval, every method")
    labels = [T.method_label(m) for m in METHOD_ORDER]
    assert [r for r in table.index if r != "Chance (random ranking)"] == labels
    for method, label in zip(METHOD_ORDER, labels, strict=True):
        m = metrics_of(project, method)
        top1 = (
            f"{m['paper/top1']:.3f} [{m['paper/top1_ci_low']:.3f}, {m['paper/top1_ci_high']:.3f}]"
        )
        assert table.loc[label, "Top-1 (paper)"] == top1
        assert table.loc[label, "I→T median rank"] == f"{m['report/i2t_median_rank']:.1f}"
        assert table.loc[label, "Queries"] == f"{m['pool/queries']:,.0f}"
        assert table.loc[label, "Report pool"] == f"{m['pool/report_candidates']:,.0f}"
    chance = metrics_of(project, METHOD_ORDER[0])["report/i2t_R@1_chance"]
    assert table.loc["Chance (random ranking)", "I→T R@1"] == f"{chance:.3f}"


def test_normal_vs_abnormal_table_reads_the_subset_keys(project, rendered_tables):
    table = markdown_table(
        (rendered_tables / "metrics.md").read_text(), "Normal vs abnormal studies"
    )
    m = metrics_of(project, "finetuned")
    assert len(table) == 2 * len(METHOD_ORDER)
    for subset in ("normal", "abnormal"):
        row = table.loc[f"Fine-tuned CLIP · {subset}"]
        assert row["I→T R@5"].startswith(f"{m[f'{subset}/report/i2t_R@5']:.3f} [")
        assert row["Queries"] == f"{m[f'{subset}/pool/queries']:,.0f}"
    assert m["normal/pool/queries"] + m["abnormal/pool/queries"] == m["pool/queries"]


def test_paired_comparison_means_equal_each_methods_metrics(project, rendered_tables):
    csv = pd.read_csv(rendered_tables / "metrics.csv")
    paired = csv[csv["table"] == "paired"].set_index(["row", "column"])
    zs, ft = metrics_of(project, "zeroshot"), metrics_of(project, "finetuned")
    for column, spec in T.PAIRED_COLUMNS.items():
        assert paired.loc[(column, "zeroshot"), "value"] == pytest.approx(zs[spec.key], abs=1e-12)
        assert paired.loc[(column, "finetuned"), "value"] == pytest.approx(ft[spec.key], abs=1e-12)
        diff = paired.loc[(column, "diff")]
        assert diff["value"] == pytest.approx(ft[spec.key] - zs[spec.key], abs=1e-12)
        assert diff["low"] <= diff["value"] <= diff["high"]
    assert 0.0 <= paired.loc[("hit1_paper", "mcnemar_p"), "value"] <= 1.0
    # the stronger fake model wins clearly on these data
    assert paired.loc[("hit1_report", "diff"), "low"] > 0


def test_study_table_sets_the_papers_claims_beside_ours_with_chance(project, rendered_tables):
    csv = pd.read_csv(rendered_tables / "metrics.csv")
    study = csv[csv["table"] == "study"].set_index(["row", "column"])
    assert study.loc[("loss_first", "study"), "value"] == 2.7438
    assert study.loc[("loss_last", "study"), "value"] == 2.4144
    assert study.loc[("loss_first", "finetuned"), "value"] == 2.05
    assert study.loc[("loss_last", "finetuned"), "value"] == 1.62
    assert study.loc[("loss_first", "chance"), "value"] == pytest.approx(math.log(BATCH))
    zs, ft = metrics_of(project, "zeroshot"), metrics_of(project, "finetuned")
    for key, _, _ in T.PAPER_TOP1_VARIANTS:
        row = "top1_gain_relative" + key.removeprefix("paper/top1")
        assert study.loc[(row, "study"), "value"] == 0.41
        assert zs[key] > 0, (
            key
        )  # the fixture must give zero-shot some Top-1 hits under every tie rule
        assert study.loc[(row, "finetuned"), "value"] == pytest.approx(ft[key] / zs[key] - 1)
    cosine = study.loc[("cosine_successful", "study")]
    assert (cosine["low"], cosine["high"], cosine["interval"]) == (0.29, 0.33, "range")
    ranking = pd.read_parquet(project / "results/finetuned/rankings.parquet")
    expected = ranking.loc[ranking["hit1_paper_any"] > 0, "top1_score"].mean()
    assert study.loc[("cosine_successful", "finetuned"), "value"] == pytest.approx(expected)
    md = (rendered_tables / "metrics.md").read_text()
    assert (
        "0.290–0.330" in md and "ln 32 = 3.47" in md and f"ln {BATCH} = {math.log(BATCH):.4f}" in md
    )


def test_html_page_is_self_contained_and_holds_every_table(rendered_tables):
    page = (rendered_tables / "metrics.html").read_text()
    assert page.count("<table>") == 5
    assert "<script" not in page and "http" not in page


def test_missing_method_results_fail_with_a_message_naming_the_file(project, tmp_path, capsys):
    broken = tmp_path / "results"
    for method in METHOD_ORDER:
        if method != "tfidf_prior":
            (broken / method).mkdir(parents=True)
            for name in ("metrics.json", "rankings.parquet"):
                (broken / method / name).write_bytes(
                    (project / "results" / method / name).read_bytes()
                )
    code = cli_main(
        [
            "render-tables",
            "--params",
            str(project / "params.yaml"),
            "--results-dir",
            str(broken),
            "--history",
            str(project / "models/history.csv"),
            "--out-md",
            str(tmp_path / "m.md"),
            "--out-csv",
            str(tmp_path / "m.csv"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert str(broken / "tfidf_prior" / "metrics.json") in err and "Traceback" not in err
    assert not (tmp_path / "m.md").exists()


def test_format_cell_shows_intervals_ranges_and_missing_values():
    assert T.format_cell(T.Cell(0.5, 0.4, 0.61, "ci")) == "0.500 [0.400, 0.610]"
    assert T.format_cell(T.Cell(math.nan, 0.29, 0.33, "range", "score")) == "0.290–0.330"
    assert T.format_cell(T.Cell(math.nan)) == "–"
    assert T.format_cell(T.Cell(-0.12, kind="relative")) == "-12.0%"


# --------------------------------------------------------------------------- figures


def test_every_figure_is_a_valid_non_blank_png(rendered_figures):
    written = sorted(p.name for p in rendered_figures.glob("*.png"))
    assert written == sorted(f"{name}.png" for name in F.FIGURE_NAMES)
    for name in F.FIGURE_NAMES:
        path = rendered_figures / f"{name}.png"
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width >= 600 and img.height >= 300, name
            pixels = np.asarray(img.convert("RGB"), dtype=np.float64)
        non_white = (pixels < 245).any(axis=2).mean()
        colours = len(np.unique(pixels.reshape(-1, 3)[::7], axis=0))
        assert non_white > 0.02 and colours > 50, (name, non_white, colours)


def test_retrieval_examples_wrap_long_reports_without_dropping_words(project):
    ranking = (
        pd.read_parquet(project / "results/finetuned/rankings.parquet")
        .sort_values("pair_id")
        .reset_index(drop=True)
    )
    long_rows = [i for i, t in enumerate(ranking["true_text"]) if "supercalifragilistic" in t]
    assert long_rows, "fixture must hold the long report in the test split"
    rows = long_rows[:1] + [0]
    labels, criterion = F.query_label_sets(
        ranking, pd.read_parquet(project / "data/reports.parquet")
    )
    images = [np.zeros((CACHE_SIDE, CACHE_SIDE), np.uint8) + 128 for _ in rows]
    with figure_style():
        fig = F.retrieval_examples_figure(ranking, images, rows, labels, criterion, width=60)
    shown = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert criterion == "MeSH label groups"
    for word in ranking["true_text"].iloc[long_rows[0]].split():
        assert word in shown.replace("\n", " ") or all(
            part in shown for part in wrap(word, 60).split("\n")
        )
    longest = max(
        len(line) for ax in fig.axes for t in ax.texts for line in t.get_text().split("\n")
    )
    assert longest <= 60


def test_wrap_never_drops_text_and_respects_the_width():
    wrapped = wrap(LONG_REPORT, 40)
    assert max(len(line) for line in wrapped.split("\n")) <= 40
    assert wrapped.replace("\n", "").replace(" ", "") == LONG_REPORT.replace(" ", "")


def test_split_scores_separates_the_true_pair_from_every_negative():
    scores = np.arange(12, dtype=np.float32).reshape(3, 4)
    true, negatives = F.split_scores(scores, np.array([0, 2, 3]))
    assert true.tolist() == [0.0, 6.0, 11.0]
    assert sorted(negatives.tolist()) == [1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 8.0, 9.0, 10.0]
    _, sampled = F.split_scores(np.zeros((50, 50)), np.arange(50), max_negatives=100)
    assert sampled.size == 100


def test_tsne_map_is_seeded_and_separation_score_sees_clusters():
    rng = np.random.default_rng(0)
    normal = np.arange(40) % 2 == 0
    features = rng.normal(size=(40, 8)) * 0.1
    features[:, 0] += np.where(normal, 1.0, -1.0)
    features[:, 1] += 1.0
    first, second = F.project_2d(features, "tsne", seed=7), F.project_2d(features, "tsne", seed=7)
    assert first.shape == (40, 2) and np.array_equal(first, second)
    assert F.separation_score(features, normal) > 0.5
    assert math.isnan(F.separation_score(features, np.ones(40, bool)))


def test_precision_by_label_averages_the_per_query_precision_of_each_group():
    ranking = pd.DataFrame({"p5_label": [1.0, 0.0, 0.5], "p5_label_chance": [0.2, 0.2, 0.4]})
    labels = [
        frozenset({"normal"}),
        frozenset({"cardiomegaly", "effusion"}),
        frozenset({"cardiomegaly"}),
    ]
    table = F.precision_by_label({"zeroshot": ranking}, labels, 5).set_index("label")
    assert list(table.index) == ["normal", "cardiomegaly", "effusion"]
    assert (
        table.loc["cardiomegaly", "zeroshot"] == 0.25
        and table.loc["cardiomegaly", "n_queries"] == 2
    )
    assert table.loc["cardiomegaly", "chance"] == pytest.approx(0.3)


def test_figures_render_headless_even_when_an_interactive_backend_is_requested(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env["MPLBACKEND"] = "TkAgg"
    code = (
        "import matplotlib; import cxrclip.reporting.figures as F; "
        "from cxrclip.reporting.style import figure_style, save_figure; import pandas as pd; "
        "h = pd.DataFrame({'epoch': [1, 2], 'train_loss': [2.0, 1.5]}); "
        "exec('with figure_style():\\n    save_figure(F.training_curves_figure(h, None, 32), \"t.png\")'); "
        "print(matplotlib.get_backend())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().lower() == "agg"
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_missing_embeddings_fail_before_any_figure_is_drawn(project, tmp_path, capsys):
    results = tmp_path / "results"
    for method in METHOD_ORDER:
        (results / method).mkdir(parents=True)
        for src in (project / "results" / method).iterdir():
            if not (method == "finetuned" and src.name == "embeddings.npz"):
                (results / method / src.name).write_bytes(src.read_bytes())
    code = cli_main(
        [
            "render-figures",
            "--params",
            str(project / "params.yaml"),
            "--results-dir",
            str(results),
            "--history",
            str(project / "models/history.csv"),
            "--steps",
            str(project / "models/steps.csv"),
            "--pairs",
            str(project / "data/pairs.parquet"),
            "--cache",
            str(project / "data/cache.npy"),
            "--out-dir",
            str(tmp_path / "figures"),
        ]
    )
    err = capsys.readouterr().err
    assert (
        code == 2
        and str(results / "finetuned" / "embeddings.npz") in err
        and "Traceback" not in err
    )
    assert not list((tmp_path).glob("figures/*.png"))


@pytest.mark.parametrize("caption", ["figures", "metrics", "data"])
def test_report_captions_render_as_snakemake_does(caption):
    """Jinja (trim/lstrip blocks, as `snakemake --report`) then docutils: no errors, one text per figure."""
    from docutils.core import publish_parts
    from jinja2 import Environment
    from snakemake.iocontainers import (
        InputFiles,
        Log,
        OutputFiles,
        Params,
        ResourceList,
        Snakemake,
        Wildcards,
    )

    config = yaml.safe_load((ROOT / "params.yaml").read_text())
    env = Environment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string((ROOT / "workflow" / "report" / f"{caption}.rst").read_text())
    names = F.FIGURE_NAMES if caption == "figures" else ("",)
    bodies = set()
    for name in names:
        snake = Snakemake(
            InputFiles(),
            OutputFiles(),
            Params(),
            Wildcards(fromdict={"name": name}),
            1,
            ResourceList(),
            Log(),
            config,
            "render",
            None,
        )
        text = template.render(snakemake=snake)
        body = publish_parts(
            text, writer="html", settings_overrides={"halt_level": 2, "report_level": 5}
        )["body"]
        assert len(body) > 200 and "System Message" not in body, name
        bodies.add(body)
    assert len(bodies) == len(names)  # every figure has its own caption
