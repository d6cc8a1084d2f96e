"""Data summary counts and figures (cxrclip.reporting.data_summary, `cxrclip data-summary`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from cxrclip.cli import main as cli_main
from cxrclip.data.splits import build_pairs
from cxrclip.reporting.data_summary import (
    DataTables,
    label_distribution_figure,
    mesh_term,
    render_counts_markdown,
    sample_images_figure,
    short_caption,
    summarize_counts,
    write_data_summary,
)

KAGGLE_REPORTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "iuxray-kaggle-reports" / "indiana_reports.csv"
LONG_IMPRESSION = ("Stable appearance of the chest with mild cardiomegaly, small bilateral pleural effusions and "
                   "bibasilar atelectasis; no pneumothorax. Degenerative changes of the thoracic spine.")


def make_tables(n_reports: int = 40) -> tuple[DataTables, np.ndarray]:
    reports, images = [], []
    for r in range(1, n_reports + 1):
        ids = [f"CXR{r}_IM-{k}" for k in (1, 2)]
        normal = r % 2 == 0
        reports.append({"report_id": f"CXR{r}", "image_ids": ids, "is_normal": normal,
                        "mesh_major": ["normal"] if normal else ["Cardiomegaly/mild", "Opacity/lung/base"],
                        "impression": "No acute disease." if normal else LONG_IMPRESSION,
                        "text": "No acute disease." if normal else f"{LONG_IMPRESSION} case {r % 5}",
                        "n_tokens": 8 if normal else 90, "truncated": not normal})
        for k, image_id in enumerate(ids):
            images.append({"image_id": image_id, "ok": not (r == 3 and k == 1),
                           "cache_index": len(images), "view": ("frontal", "lateral")[k]})
    reports_df, images_df = pd.DataFrame(reports), pd.DataFrame(images)
    pairs, pair_excl = build_pairs(reports_df, images_df, [0.8, 0.1, 0.1], seed=0)
    report_excl = pd.DataFrame({"report_id": ["CXR900", "CXR901", None], "source_file": ["a", "b", "c"],
                                "reason": ["no_findings_or_impression", "no_findings_or_impression",
                                           "malformed_xml"], "detail": ["", "", ""]})
    image_excl = pd.DataFrame({"image_id": ["CXR3_IM-2"], "report_id": ["CXR3"], "path": ["x.png"],
                               "reason": ["truncated"], "detail": [""]})
    cache = np.random.default_rng(0).integers(0, 256, (len(images), 24, 24), dtype=np.uint8)
    return DataTables(reports_df, report_excl, images_df, image_excl, pairs, pair_excl), cache


def count(counts: pd.DataFrame, section: str, name: str) -> float:
    return counts.set_index(["section", "name"]).loc[(section, name), "value"]


def test_counts_add_up_per_split_and_list_exclusions_by_stage_and_reason():
    tables, _ = make_tables()
    counts = summarize_counts(tables)
    assert sum(count(counts, f"split/{s}", "pairs") for s in ("train", "val", "test")) == 79
    assert sum(count(counts, f"split/{s}", "reports") for s in ("train", "val", "test")) == 40
    assert sum(count(counts, f"split/{s}", "normal_reports") for s in ("train", "val", "test")) == 20
    assert count(counts, "split/test", "frontal") + count(counts, "split/test", "lateral") == \
        count(counts, "split/test", "pairs")
    assert count(counts, "exclusions/reports", "no_findings_or_impression") == 2
    assert count(counts, "exclusions/images", "truncated") == 1
    assert count(counts, "text", "truncated_fraction") == 0.5
    # 20 normal reports share one text, abnormal ones cycle through 5 texts: 6 distinct of 40
    assert count(counts, "text", "distinct_texts") == 6 and count(counts, "text", "duplicate_texts") == 34


def test_markdown_has_split_exclusion_and_text_tables():
    tables, _ = make_tables()
    md = render_counts_markdown(summarize_counts(tables))
    assert "| all | 40 | 79 | 20 | 20 |" in md
    assert "| reports | no_findings_or_impression | 2 |" in md and "| images | truncated | 1 |" in md
    assert "| truncated fraction | 0.500 |" in md


def test_captions_are_shortened_on_a_word_boundary_and_wrapped():
    caption = short_caption(LONG_IMPRESSION, max_chars=80, width=30)
    assert caption.endswith("…") and max(len(line) for line in caption.splitlines()) <= 30
    assert caption.replace("\n", " ").removesuffix(" …") in LONG_IMPRESSION
    assert short_caption("") == "(no impression)"


def test_sample_grid_captions_stay_inside_the_figure():
    tables, cache = make_tables()
    fig = sample_images_figure(tables.pairs, tables.reports, cache, n=8)
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox
    labels = [ax.xaxis.label for ax in fig.axes if ax.get_xlabel()]
    assert len(labels) == 8
    assert sum("…" in label.get_text() for label in labels) == 4  # the abnormal half is shortened
    for label in labels:
        box = label.get_window_extent(renderer)
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0, label.get_text()


def test_summary_writes_counts_and_readable_figures(tmp_path):
    tables, cache = make_tables()
    written = write_data_summary(tables, cache, tmp_path / "data")
    assert sorted(written) == ["counts.csv", "counts.md", "label_distribution.png",
                               "report_word_counts.png", "sample_images.png"]
    for name in ("label_distribution.png", "report_word_counts.png", "sample_images.png"):
        with Image.open(written[name]) as img:
            assert img.width >= 700 and img.height >= 400
    csv = pd.read_csv(written["counts.csv"])
    assert list(csv.columns) == ["section", "name", "value"]
    pd.testing.assert_frame_equal(csv, summarize_counts(tables), check_dtype=False)


def test_mesh_term_keeps_the_main_heading():
    assert mesh_term("Pulmonary Artery/enlarged") == "Pulmonary Artery"
    assert mesh_term("normal") == "normal"


def test_real_report_texts_summarise_with_duplicates_and_normal_as_top_term(tmp_path):
    if not KAGGLE_REPORTS.exists():
        pytest.skip("real IU X-ray report CSV not available")
    raw = pd.read_csv(KAGGLE_REPORTS).fillna("")
    reports = pd.DataFrame({
        "report_id": "CXR" + raw["uid"].astype(str), "image_ids": [[f"CXR{u}_IM"] for u in raw["uid"]],
        "mesh_major": raw["MeSH"].str.split(";"), "is_normal": raw["MeSH"] == "normal",
        "impression": raw["impression"], "text": (raw["impression"] + " " + raw["findings"]).str.strip(),
        "truncated": False})
    images = pd.DataFrame({"image_id": [ids[0] for ids in reports["image_ids"]], "ok": True,
                           "cache_index": range(len(reports)), "view": "unknown"})
    pairs, pair_excl = build_pairs(reports, images, [0.8, 0.1, 0.1], seed=0)
    empty = pd.DataFrame({"reason": pd.Series([], dtype=str)})
    tables = DataTables(reports, empty, images, empty, pairs, pair_excl)
    counts = summarize_counts(tables)
    assert count(counts, "total", "reports_kept") == 3851
    assert 2900 < count(counts, "text", "distinct_texts") < 3300  # README: about 3,070
    assert count(counts, "text", "texts_in_several_splits") > 0
    figure = label_distribution_figure(reports, pairs)
    terms = [label.get_text() for label in figure.axes[0].get_yticklabels()]
    assert terms[-1] == "normal" and len(terms) == 15  # most frequent heading on top


def test_cli_reports_a_missing_input_cleanly(tmp_path, capsys):
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    code = cli_main(["data-summary", "--params", str(params), "--reports", str(tmp_path / "none.parquet"),
                     "--out-dir", str(tmp_path / "out")])
    assert code == 2 and "none.parquet: not found" in capsys.readouterr().err


def test_cli_writes_the_summary_folder(tmp_path):
    tables, cache = make_tables()
    paths = {}
    for name in ("reports", "report_exclusions", "images", "image_exclusions", "pairs", "pair_exclusions"):
        paths[name] = tmp_path / f"{name}.parquet"
        getattr(tables, name).to_parquet(paths[name])
    np.save(tmp_path / "cache.npy", cache)
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    argv = ["data-summary", "--params", str(params), "--cache", str(tmp_path / "cache.npy"),
            "--out-dir", str(tmp_path / "out")]
    for name, path in paths.items():
        argv += [f"--{name.replace('_', '-')}", str(path)]
    assert cli_main(argv) == 0
    assert (tmp_path / "out" / "counts.md").read_text().startswith("# Data summary")
    assert (tmp_path / "out" / "sample_images.png").exists()
