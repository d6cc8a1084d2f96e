"""Open-i XML parsing (cxrclip.data.reports), text cleaning (cxrclip.data.text), `cxrclip parse-reports`."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pandas as pd
import pytest
import yaml

from cxrclip.cli import main as cli_main
from cxrclip.data.io import write_parquet
from cxrclip.data.reports import EXCLUSION_COLUMNS, REPORT_COLUMNS, parse_openi_archive
from cxrclip.data.text import (
    clean_text,
    compose_text,
    count_tokens,
    drop_redactions,
    normalize_whitespace,
)
from cxrclip.errors import CxrclipError

ROOT = Path(__file__).resolve().parents[1]
TEXT_CFG = {
    "drop_redactions": True,
    "section_order": ["impression", "findings"],
    "normalize_whitespace": True,
    "lowercase": False,
    "context_length": 77,
}


def openi_xml(
    n: int,
    sections: dict[str, str] | None = None,
    major: tuple[str, ...] = ("normal",),
    automatic: tuple[str, ...] = (),
    images: tuple[str, ...] | None = None,
    doctype: str = "",
) -> bytes:
    """One report in the real Open-i layout (eCitation/uId, MedlineCitation/Article/Abstract, MeSH, parentImage)."""
    if sections is None:
        sections = {"COMPARISON": "None.", "INDICATION": "Cough", "FINDINGS": "Lungs are clear.",
                    "IMPRESSION": "No acute disease."}
    if images is None:
        images = (f"CXR{n}_IM-0001-1001", f"CXR{n}_IM-0001-2001")
    abstract = "\n".join(f'        <AbstractText Label="{label}">{text}</AbstractText>'
                         for label, text in sections.items())
    mesh = "\n".join([f"    <major>{escape(t)}</major>" for t in major]
                     + [f"    <automatic>{escape(t)}</automatic>" for t in automatic])
    parents = "\n".join(f"  <parentImage id={quoteattr(i)}><figureId>F1</figureId><caption>Xray Chest</caption>"
                        f"<panel type=\"single\"><url>/hadoop/{i}.jpg</url></panel></parentImage>" for i in images)
    return f"""<?xml version="1.0" encoding="utf-8"?>{doctype}
<eCitation>
  <meta type="rr"/>
  <uId id="CXR{n}"/>
  <pmcId id="{n}"/>
  <docSource>CXR</docSource>
  <IUXRId id="{n}"/>
  <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
    <Article PubModel="Electronic">
      <ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle>
      <Abstract>
{abstract}
      </Abstract>
    </Article>
  </MedlineCitation>
  <MeSH>
{mesh}
  </MeSH>
{parents}
</eCitation>
""".encode()


def make_archive(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    """Write a .tgz with regular ``members`` (name -> bytes) and ``symlinks`` (name -> target)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def parse(tmp_path: Path, members: dict[str, bytes], text_cfg: dict | None = None, **kw):
    archive = make_archive(tmp_path / "NLMCXR_reports.tgz", members, **kw)
    return parse_openi_archive(archive, text_cfg or TEXT_CFG, progress=False)


# ----------------------------------------------------------------------------- text cleaning

@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("Normal chest x-XXXX.", "Normal chest x-."),
        ("Inferior XXXX XXXX XXXX.", "Inferior."),
        ("Stable. XXXX. Clear lungs.", "Stable. Clear lungs."),
        ("There are no XXXX of a pleural effusion.", "There are no of a pleural effusion."),
        ("XXXX-year-old XXXX with XXXX.", "-year-old with."),
        ("XXXX, XXXX, and clear lungs", "and clear lungs"),
        ("Comparison (XXXX). Clear", "Comparison. Clear"),
        ("ComparisXXXXXXXX none", "Comparis none"),
        ("No XXXX", "No"),
        ("XXXX", ""),
        ("no redaction here", "no redaction here"),
    ],
)
def test_drop_redactions_removes_tokens_also_inside_words(raw, cleaned):
    assert drop_redactions(raw) == cleaned


def test_drop_redactions_keeps_other_whitespace_and_adds_no_double_space():
    assert drop_redactions("a\tXXXX\nb  c XXXX d") == "a\nb  c d"  # only the token and its separator go


def test_normalize_whitespace_maps_tabs_nbsp_newlines_and_nfkc():
    raw = "\ufeff  Heart\u00a0size\tnormal.\r\n\u2028Lungs\u200b clear\uff0e  \n"
    assert normalize_whitespace(raw) == "Heart size normal. Lungs clear."


def test_clean_text_steps_follow_their_params():
    raw = "  Heart XXXX\tNORMAL "
    assert clean_text(raw, TEXT_CFG) == "Heart NORMAL"
    assert clean_text(raw, {**TEXT_CFG, "lowercase": True}) == "heart normal"
    assert clean_text(raw, {**TEXT_CFG, "drop_redactions": False}) == "Heart XXXX NORMAL"
    assert clean_text(raw, {**TEXT_CFG, "normalize_whitespace": False}) == "Heart\tNORMAL"


def test_compose_text_joins_non_empty_sections_in_order():
    sections = {"findings": "Lungs clear.", "impression": "Normal.", "indication": ""}
    assert compose_text(sections, ["impression", "findings"]) == "Normal. Lungs clear."
    assert compose_text(sections, ["findings", "indication", "impression"]) == "Lungs clear. Normal."
    with pytest.raises(CxrclipError, match="section_order"):
        compose_text(sections, ["history"])


def test_count_tokens_matches_open_clip_tokenizer_and_counts_before_truncation():
    import open_clip

    texts = ["Normal chest.", "", "Heart size normal. " * 30, "Normal chest."]
    n_tokens, truncated = count_tokens(texts, context_length=77)
    ids = open_clip.get_tokenizer("ViT-B-32")(texts[:2])
    assert n_tokens[:2].tolist() == (ids != 0).sum(dim=1).tolist()  # SOT + tokens + EOT
    assert n_tokens[1] == 2 and n_tokens[0] == n_tokens[3]
    assert n_tokens[2] > 77 and truncated.tolist() == [False, False, True, False]


# ----------------------------------------------------------------------------- Open-i XML

def test_report_fields_are_read_from_the_openi_structure(tmp_path):
    xml = openi_xml(7, major=("Cardiomegaly/mild", "Opacity"), automatic=("Cardiomegaly",),
                    sections={"COMPARISON": "None.", "INDICATION": "XXXX-year-old with cough",
                              "FINDINGS": "Heart is XXXX enlarged.", "IMPRESSION": "Mild cardiomegaly."})
    reports, exclusions = parse(tmp_path, {"ecgen-radiology/7.xml": xml})
    assert list(reports.columns) == REPORT_COLUMNS and len(exclusions) == 0
    row = reports.iloc[0]
    assert row.report_id == "CXR7" and row.source_file == "ecgen-radiology/7.xml"
    assert (row.comparison, row.indication) == ("None.", "XXXX-year-old with cough")  # raw text
    assert row.findings == "Heart is XXXX enlarged." and row.impression == "Mild cardiomegaly."
    assert list(row.mesh_major) == ["Cardiomegaly/mild", "Opacity"]
    assert list(row.mesh_automatic) == ["Cardiomegaly"]
    assert list(row.image_ids) == ["CXR7_IM-0001-1001", "CXR7_IM-0001-2001"]
    assert not row.is_normal
    assert row.text == "Mild cardiomegaly. Heart is enlarged."
    assert row.n_tokens == count_tokens([row.text])[0][0] and not row.truncated


def test_section_labels_match_case_insensitively(tmp_path):
    xml = openi_xml(1, sections={"Findings": "Clear.", "impression": "Normal."})
    reports, _ = parse(tmp_path, {"ecgen-radiology/1.xml": xml})
    assert reports.iloc[0].text == "Normal. Clear."


@pytest.mark.parametrize(("major", "normal"), [(("normal",), True), (("Normal ",), True),
                                                (("normal", "Opacity"), False), ((), False)])
def test_is_normal_means_mesh_major_is_exactly_normal(tmp_path, major, normal):
    reports, _ = parse(tmp_path, {"ecgen-radiology/1.xml": openi_xml(1, major=major)})
    assert bool(reports.iloc[0].is_normal) is normal


def test_rows_are_sorted_by_numeric_report_number(tmp_path):
    members = {f"ecgen-radiology/{n}.xml": openi_xml(n) for n in (10, 2, 100, 1, 9)}
    reports, _ = parse(tmp_path, members)
    assert reports.report_id.tolist() == ["CXR1", "CXR2", "CXR9", "CXR10", "CXR100"]


def test_every_exclusion_reason_is_recorded_once_with_detail(tmp_path):
    members = {
        "ecgen-radiology/1.xml": openi_xml(1),
        "ecgen-radiology/2.xml": b"<eCitation><uId id='CXR2'/><MeSH>",  # truncated XML
        "ecgen-radiology/3.xml": openi_xml(3, sections={"INDICATION": "Cough", "FINDINGS": ""}),
        "ecgen-radiology/10.xml": openi_xml(10, sections={"FINDINGS": "XXXX XXXX.", "IMPRESSION": " "}),
        "ecgen-radiology/4.xml": openi_xml(4, images=()),
        "ecgen-radiology/5.xml": openi_xml(5),
        "ecgen-radiology/5-copy.xml": openi_xml(5),
        "ecgen-radiology/6.xml": b"<html><body>not a report</body></html>",
        "ecgen-radiology/7.xml": b"<eCitation><MeSH/></eCitation>",  # no uId
        "../evil.xml": openi_xml(8),
    }
    reports, exclusions = parse(tmp_path, members, symlinks={"ecgen-radiology/9.xml": "/etc/passwd"})
    assert reports.report_id.tolist() == ["CXR1", "CXR5"]
    assert reports.source_file.tolist() == ["ecgen-radiology/1.xml", "ecgen-radiology/5-copy.xml"]
    got = {(r.source_file, r.reason) for r in exclusions.itertuples()}
    assert got == {
        ("ecgen-radiology/2.xml", "malformed_xml"),
        ("ecgen-radiology/3.xml", "no_findings_or_impression"),
        ("ecgen-radiology/10.xml", "no_findings_or_impression"),
        ("ecgen-radiology/4.xml", "no_images"),
        ("ecgen-radiology/5.xml", "duplicate_id"),
        ("ecgen-radiology/6.xml", "malformed_xml"),
        ("ecgen-radiology/7.xml", "malformed_xml"),
        ("../evil.xml", "unsafe_member"),
        ("ecgen-radiology/9.xml", "unsafe_member"),
    }
    assert list(exclusions.columns) == EXCLUSION_COLUMNS
    assert exclusions.detail.str.len().min() > 0
    by_file = exclusions.set_index("source_file")
    assert by_file.loc["ecgen-radiology/5.xml", "report_id"] == "CXR5"
    assert pd.isna(by_file.loc["ecgen-radiology/2.xml", "report_id"])
    assert "eCitation" in by_file.loc["ecgen-radiology/6.xml", "detail"]


def test_external_entity_is_not_resolved(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-PATIENT-NAME")
    doctype = f'\n<!DOCTYPE eCitation [<!ENTITY xxe SYSTEM "{secret.as_uri()}">]>'
    xml = openi_xml(1, sections={"FINDINGS": "Clear &xxe; lungs.", "IMPRESSION": "Normal."}, doctype=doctype)
    reports, exclusions = parse(tmp_path, {"ecgen-radiology/1.xml": xml})
    dumped = reports.astype(str).to_csv() + exclusions.astype(str).to_csv()
    assert "TOPSECRET" not in dumped
    assert "&xxe;" not in dumped
    assert reports.iloc[0].findings == "Clear  lungs."
    assert reports.iloc[0].text == "Normal. Clear lungs."


def test_entity_expansion_bomb_is_not_expanded(tmp_path):
    entities = '<!ENTITY a0 "lol">' + "".join(
        f'<!ENTITY a{i} "{f"&a{i - 1};" * 10}">' for i in range(1, 10))
    doctype = f"\n<!DOCTYPE eCitation [{entities}]>"
    xml = openi_xml(1, sections={"FINDINGS": "Clear &a9; lungs.", "IMPRESSION": "Normal."}, doctype=doctype)
    reports, exclusions = parse(tmp_path, {"ecgen-radiology/1.xml": xml, "ecgen-radiology/2.xml": openi_xml(2)})
    assert "CXR2" in reports.report_id.tolist()  # the rest of the archive is unaffected
    longest = max(reports.findings.str.len().max(), exclusions.detail.str.len().max() if len(exclusions) else 0)
    assert longest < 500
    assert "lollol" not in reports.astype(str).to_csv()


def test_unicode_and_whitespace_are_normalised_in_text_not_in_raw_sections(tmp_path):
    findings = "Heart\u00a0size\tnormal.\n\n   Lungs \uff43lear\u200b."
    xml = openi_xml(1, sections={"FINDINGS": findings, "IMPRESSION": "  No\u3000acute disease. "})
    reports, _ = parse(tmp_path, {"ecgen-radiology/1.xml": xml})
    row = reports.iloc[0]
    assert row.findings == findings
    assert row.text == "No acute disease. Heart size normal. Lungs clear."
    assert "  " not in row.text


def test_section_order_param_sets_the_clip_text(tmp_path):
    members = {"ecgen-radiology/1.xml": openi_xml(1)}
    default, _ = parse(tmp_path, members)
    swapped, _ = parse(tmp_path, members, {**TEXT_CFG, "section_order": ["findings", "indication", "impression"]})
    assert default.iloc[0].text == "No acute disease. Lungs are clear."
    assert swapped.iloc[0].text == "Lungs are clear. Cough No acute disease."


def test_lowercase_param_lowercases_only_the_clip_text(tmp_path):
    reports, _ = parse(tmp_path, {"ecgen-radiology/1.xml": openi_xml(1)}, {**TEXT_CFG, "lowercase": True})
    assert reports.iloc[0].text == "no acute disease. lungs are clear."
    assert reports.iloc[0].impression == "No acute disease."


def test_long_report_is_flagged_truncated_with_its_full_token_count(tmp_path):
    long = "The cardiomediastinal silhouette is within normal limits for size and contour. " * 6
    xml = openi_xml(1, sections={"FINDINGS": long, "IMPRESSION": "Normal."})
    reports, _ = parse(tmp_path, {"ecgen-radiology/1.xml": xml}, {**TEXT_CFG, "context_length": 77})
    assert reports.iloc[0].n_tokens > 77 and reports.iloc[0].truncated


def test_not_a_tar_archive_is_one_clear_error(tmp_path):
    bad = tmp_path / "NLMCXR_reports.tgz"
    bad.write_bytes(b"<html>503 Service Unavailable</html>")
    with pytest.raises(CxrclipError, match="not a readable tar archive"):
        parse_openi_archive(bad, TEXT_CFG, progress=False)


def test_tables_round_trip_through_parquet_with_contract_types(tmp_path):
    import pyarrow.parquet as pq

    reports, exclusions = parse(tmp_path, {"ecgen-radiology/1.xml": openi_xml(1),
                                           "ecgen-radiology/2.xml": openi_xml(2, images=())})
    write_parquet(reports, tmp_path / "r.parquet")
    write_parquet(exclusions, tmp_path / "e.parquet")
    schema = pq.read_schema(tmp_path / "r.parquet")
    types = {name: str(schema.field(name).type) for name in REPORT_COLUMNS}
    assert types["image_ids"] == types["mesh_major"] == "list<element: string>"
    assert types["n_tokens"] == "int64" and types["is_normal"] == types["truncated"] == "bool"
    assert types["report_id"] in ("string", "large_string")
    back = pd.read_parquet(tmp_path / "r.parquet")
    assert list(back.image_ids.iloc[0]) == ["CXR1_IM-0001-1001", "CXR1_IM-0001-2001"]
    assert pd.read_parquet(tmp_path / "e.parquet").reason.tolist() == ["no_images"]


def test_empty_tables_still_have_every_column_after_parquet(tmp_path):
    reports, exclusions = parse(tmp_path, {"ecgen-radiology/1.xml": openi_xml(1, images=())})
    assert len(reports) == 0
    write_parquet(reports, tmp_path / "r.parquet")
    back = pd.read_parquet(tmp_path / "r.parquet")
    assert list(back.columns) == REPORT_COLUMNS and len(back) == 0
    empty_exclusions = exclusions.iloc[0:0]
    write_parquet(empty_exclusions, tmp_path / "e.parquet")
    assert list(pd.read_parquet(tmp_path / "e.parquet").columns) == EXCLUSION_COLUMNS


def _cli_params(tmp_path: Path, **text: object) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["text"].update(text)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_cli_parse_reports_writes_both_tables_and_logs_counts(tmp_path, caplog):
    archive = make_archive(tmp_path / "in.tgz", {"ecgen-radiology/1.xml": openi_xml(1),
                                                 "ecgen-radiology/2.xml": openi_xml(2, images=())})
    out, exc_out = tmp_path / "interim" / "reports.parquet", tmp_path / "interim" / "excl.parquet"
    caplog.set_level("INFO")
    code = cli_main(["parse-reports", "--params", str(_cli_params(tmp_path)), "--archive", str(archive),
                     "--out", str(out), "--exclusions-out", str(exc_out), "--no-progress"])
    assert code == 0
    assert pd.read_parquet(out).report_id.tolist() == ["CXR1"]
    assert pd.read_parquet(exc_out).reason.tolist() == ["no_images"]
    assert re.search(r"reports kept: 1; excluded: 1 .*no_images", caplog.text)


def test_cli_parse_reports_missing_archive_exits_2_with_hint(tmp_path, capsys):
    code = cli_main(["parse-reports", "--params", str(_cli_params(tmp_path)),
                     "--archive", str(tmp_path / "missing.tgz")])
    err = capsys.readouterr().err
    assert code == 2 and "cxrclip download" in err and "Traceback" not in err
