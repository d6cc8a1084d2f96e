"""Kaggle layout (cxrclip.data.kaggle): small CSVs in tmp_path, and the real IU X-ray CSVs when present."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cxrclip.cli import main as cli_main
from cxrclip.data.kaggle import kaggle_image_id, kaggle_views, parse_kaggle, split_mesh
from cxrclip.data.reports import EXCLUSION_COLUMNS, REPORT_COLUMNS
from cxrclip.errors import CxrclipError

ROOT = Path(__file__).resolve().parents[1]
TEXT_CFG = {
    "drop_redactions": True,
    "section_order": ["impression", "findings"],
    "normalize_whitespace": True,
    "lowercase": False,
    "context_length": 77,
}
REPORT_HEADER = ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def small_kaggle(folder: Path) -> tuple[Path, Path]:
    """Reports 1 (normal), 2 (abnormal, XXXX), 3 (no text), 4 (no images), 2 again, 'x' (bad uid)."""
    reports = write_csv(folder / "indiana_reports.csv", REPORT_HEADER, [
        ["1", "normal", "normal", "Xray Chest PA and Lateral", "Positive TB test", "None.",
         "The lungs are clear. There are no XXXX of effusion.", "Normal chest x-XXXX."],
        ["2", "Cardiomegaly/borderline;Pulmonary Artery/enlarged", "Cardiomegaly;Pulmonary Artery",
         "Chest, 2 views", "Preop", "", "Borderline cardiomegaly.", "None"],
        ["3", "normal", "normal", "Xray Chest", "Cough", "", "", ""],
        ["4", "normal", "normal", "Xray Chest", "Cough", "", "Clear.", "Normal."],
        ["2", "normal", "normal", "Xray Chest", "", "", "Duplicate row.", "Normal."],
        ["x", "normal", "normal", "Xray Chest", "", "", "Bad uid.", "Normal."],
    ])
    projections = write_csv(folder / "indiana_projections.csv", ["uid", "filename", "projection"], [
        ["1", "1_IM-0001-4001.dcm.png", "Frontal"],
        ["1", "1_IM-0001-3001.dcm.png", "Lateral"],
        ["2", "2_IM-0652-1001-0001.dcm.png", "Frontal"],
        ["3", "3_IM-1384-1001.dcm.png", "Frontal"],
        ["9", "9_IM-0002-1001.dcm.png", "Oblique"],
    ])
    return reports, projections


def test_kaggle_rows_map_to_the_reports_schema(tmp_path):
    reports, exclusions = parse_kaggle(*small_kaggle(tmp_path), TEXT_CFG)
    assert list(reports.columns) == REPORT_COLUMNS and list(exclusions.columns) == EXCLUSION_COLUMNS
    assert reports.report_id.tolist() == ["CXR1", "CXR2"]
    one, two = reports.iloc[0], reports.iloc[1]
    assert one.source_file == "indiana_reports.csv:1" and one.comparison == "None."
    assert list(one.image_ids) == ["CXR1_IM-0001-4001", "CXR1_IM-0001-3001"]
    assert list(one.mesh_major) == ["normal"] and list(one.mesh_automatic) == [] and one.is_normal
    assert one.text == "Normal chest x-. The lungs are clear. There are no of effusion."
    assert list(two.mesh_major) == ["Cardiomegaly/borderline", "Pulmonary Artery/enlarged"]
    assert not two.is_normal
    assert two.impression == "None"  # report text "None" is text, not a missing value
    assert list(two.image_ids) == ["CXR2_IM-0652-1001-0001"]


def test_kaggle_exclusions_use_the_xml_reasons(tmp_path):
    _, exclusions = parse_kaggle(*small_kaggle(tmp_path), TEXT_CFG)
    got = {(r.source_file, r.reason) for r in exclusions.itertuples()}
    assert got == {
        ("indiana_reports.csv:3", "no_findings_or_impression"),
        ("indiana_reports.csv:4", "no_images"),
        ("indiana_reports.csv:2", "duplicate_id"),
        ("indiana_reports.csv:row7", "malformed_row"),
    }


def test_kaggle_views_are_lowercase_with_unknown_for_other_labels(tmp_path):
    _, projections = small_kaggle(tmp_path)
    views = kaggle_views(projections)
    assert views.image_id.tolist()[:2] == ["CXR1_IM-0001-4001", "CXR1_IM-0001-3001"]
    assert views.view.tolist() == ["frontal", "lateral", "frontal", "frontal", "unknown"]
    assert views.report_id.tolist()[-1] == "CXR9"


@pytest.mark.parametrize(("name", "image_id"), [
    ("1_IM-0001-4001.dcm.png", "CXR1_IM-0001-4001"),
    ("images/21_IM-0729-1001-0001.dcm.png", "CXR21_IM-0729-1001-0001"),
    ("CXR5_IM-0001-1001.png", "CXR5_IM-0001-1001"),
])
def test_kaggle_image_id_strips_suffix_and_prefixes_cxr_once(name, image_id):
    assert kaggle_image_id(name) == image_id


def test_split_mesh_keeps_full_terms():
    assert split_mesh("Opacity/lung/apex/left/irregular; Cicatrix;;") == ["Opacity/lung/apex/left/irregular", "Cicatrix"]


def test_missing_column_is_one_clear_error(tmp_path):
    reports = write_csv(tmp_path / "indiana_reports.csv", ["uid", "findings"], [["1", "Clear."]])
    projections = write_csv(tmp_path / "indiana_projections.csv", ["uid", "filename", "projection"], [])
    with pytest.raises(CxrclipError, match=r"missing column\(s\) \['MeSH', 'indication'"):
        parse_kaggle(reports, projections, TEXT_CFG)


def test_cli_parse_reports_reads_kaggle_dir_in_kaggle_mode(tmp_path):
    kaggle = tmp_path / "kaggle"
    kaggle.mkdir()
    small_kaggle(kaggle)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["source"].update(kind="kaggle", kaggle_dir=str(kaggle))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out, exc_out = tmp_path / "reports.parquet", tmp_path / "excl.parquet"
    code = cli_main(["parse-reports", "--params", str(tmp_path / "params.yaml"),
                     "--archive", str(tmp_path / "no-such.tgz"), "--out", str(out),
                     "--exclusions-out", str(exc_out)])
    assert code == 0
    assert pd.read_parquet(out).report_id.tolist() == ["CXR1", "CXR2"]
    assert len(pd.read_parquet(exc_out)) == 4


@pytest.mark.shared_data
def test_real_kaggle_csvs_keep_3826_of_3851_reports_with_clean_text(kaggle_dir):
    raw = pd.read_csv(kaggle_dir / "indiana_reports.csv", dtype=str, keep_default_na=False)
    reports, exclusions = parse_kaggle(kaggle_dir / "indiana_reports.csv",
                                       kaggle_dir / "indiana_projections.csv", TEXT_CFG)
    assert len(raw) == 3851
    assert exclusions.reason.value_counts().to_dict() == {"no_findings_or_impression": 25}
    assert len(reports) == 3851 - 25
    assert not reports.text.str.contains("XXXX").any()
    assert not reports.text.str.contains("  ").any() and (reports.text.str.len() > 0).all()
    assert raw.findings.str.contains("XXXX").sum() > 1000  # the cleaning had work to do
    projections = pd.read_csv(kaggle_dir / "indiana_projections.csv", dtype=str)
    kept_uids = set(reports.report_id.str.removeprefix("CXR"))
    assert sum(len(ids) for ids in reports.image_ids) == projections.uid.isin(kept_uids).sum()
    assert reports.report_id.is_unique
    truncated_fraction = float(reports.truncated.mean())
    assert truncated_fraction == pytest.approx(float((reports.n_tokens > 77).mean()))
    print(f"\nreal Kaggle reports: {len(reports)} kept, truncated at 77 tokens: {truncated_fraction:.4f}, "
          f"median tokens {reports.n_tokens.median():.0f}, max {reports.n_tokens.max()}")
    assert 0.05 < truncated_fraction < 0.5


@pytest.mark.shared_data
def test_real_kaggle_views_count_frontal_and_lateral(kaggle_dir):
    views = kaggle_views(kaggle_dir / "indiana_projections.csv")
    assert views.view.value_counts().to_dict() == {"frontal": 3818, "lateral": 3648}
    assert views.image_id.is_unique and views.image_id.str.startswith("CXR").all()
