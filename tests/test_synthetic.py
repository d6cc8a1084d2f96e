"""The synthetic Open-i generator: reproducible archives, real Open-i structure, every documented
fault present and described in the manifest, and findings that show in images and texts."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from lxml import etree
from PIL import Image

from cxrclip.cli import main as cli_main
from cxrclip.data.archive import Member, Rejected, iter_tar
from cxrclip.data.synthetic import (
    IMAGES_ARCHIVE,
    LABELS,
    MANIFEST,
    ODD_CHARACTERS,
    REPORTS_ARCHIVE,
    VIEW_ASPECT,
    Finding,
    generate_openi,
    make_report,
    render_image,
)
from cxrclip.errors import CxrclipError

ROOT = Path(__file__).resolve().parents[1]
REAL_REPORTS = ROOT.parent / "shared" / "data" / "iuxray-kaggle-reports" / "indiana_reports.csv"
SIZE = 64
N_REPORTS = 16
MAX_PIXELS = 89478485  # params.yaml images.max_pixels


def secure_parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True)


def tar_members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return {m.name: m for m in tar.getmembers()}


def tar_bytes(path: Path) -> dict[str, bytes]:
    """Regular members -> bytes (read in memory, nothing extracted)."""
    out = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            if m.isfile():
                out[m.name] = tar.extractfile(m).read()
    return out


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth_faults")
    manifest = generate_openi(out, n_reports=N_REPORTS, image_size=SIZE, faults=True, seed=3,
                              progress=False)
    return out, manifest


@pytest.fixture(scope="module")
def xml_docs(faulty: tuple[Path, dict]) -> dict[str, bytes]:
    out, _ = faulty
    return {k: v for k, v in tar_bytes(out / REPORTS_ARCHIVE).items() if k.endswith(".xml")}


@pytest.fixture(scope="module")
def pngs(faulty: tuple[Path, dict]) -> dict[str, bytes]:
    out, _ = faulty
    return tar_bytes(out / IMAGES_ARCHIVE)


def at_224(pixels: np.ndarray) -> np.ndarray:
    """The image as the 224 px model would roughly see it (squashed, bilinear), as int."""
    return np.asarray(Image.fromarray(pixels).resize((224, 224), Image.BILINEAR)).astype(int)


# ---------------------------------------------------------------------------------------------
# reproducibility
# ---------------------------------------------------------------------------------------------
def test_same_arguments_give_byte_identical_archives_whatever_the_workers(tmp_path: Path,
                                                                         faulty: tuple[Path, dict]):
    first, _ = faulty
    again = generate_openi(tmp_path, n_reports=N_REPORTS, image_size=SIZE, faults=True, seed=3,
                           workers=2, progress=False)
    for name in (REPORTS_ARCHIVE, IMAGES_ARCHIVE, MANIFEST):
        assert (tmp_path / name).read_bytes() == (first / name).read_bytes(), name
    with tarfile.open(tmp_path / IMAGES_ARCHIVE) as tar:
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in tar.getmembers()} == {(0, 0, 0, "", "")}
    assert (tmp_path / REPORTS_ARCHIVE).read_bytes()[4:8] == b"\x00\x00\x00\x00"  # gzip mtime 0
    assert again["archives"] == json.loads((first / MANIFEST).read_text())["archives"]


def test_other_seed_gives_other_data(tmp_path: Path, faulty: tuple[Path, dict]):
    first, _ = faulty
    generate_openi(tmp_path, n_reports=N_REPORTS, image_size=SIZE, faults=True, seed=4, progress=False)
    assert (tmp_path / IMAGES_ARCHIVE).read_bytes() != (first / IMAGES_ARCHIVE).read_bytes()


def test_report_content_does_not_depend_on_how_many_reports_are_generated(tmp_path: Path):
    small = generate_openi(tmp_path / "a", n_reports=5, image_size=32, progress=False)
    large = generate_openi(tmp_path / "b", n_reports=9, image_size=32, progress=False)
    docs_small, docs_large = tar_bytes(tmp_path / "a" / REPORTS_ARCHIVE), tar_bytes(tmp_path / "b" / REPORTS_ARCHIVE)
    assert all(docs_large[name] == data for name, data in docs_small.items())
    assert all(large["reports"][rid] == small["reports"][rid] for rid in small["reports"])


# ---------------------------------------------------------------------------------------------
# Open-i structure
# ---------------------------------------------------------------------------------------------
def test_reports_parse_with_a_secure_parser_and_have_the_open_i_elements(faulty, xml_docs, pngs):
    _, manifest = faulty
    malformed = manifest["faults"]["malformed_xml"]["source_file"]
    parsed = 0
    for name, data in xml_docs.items():
        if name == malformed or not re.fullmatch(r"ecgen-radiology/\d+\.xml", name):
            continue
        number = int(Path(name).stem)
        root = etree.fromstring(data, secure_parser())
        assert root.tag == "eCitation"
        assert root.find("uId").get("id") == f"CXR{number}"
        assert root.find("pmcId").get("id") == str(number)
        assert root.find("IUXRId").get("id") == str(number)
        assert root.findtext("docSource") == "CXR" and root.findtext("licenseType") == "open-access"
        labels = [e.get("Label") for e in root.iterfind("MedlineCitation/Article/Abstract/AbstractText")]
        assert labels == ["COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION"]
        entry = manifest["reports"][f"CXR{number}"]
        assert [e.text for e in root.iterfind("MeSH/major")] == entry["mesh_major"]
        assert [e.text for e in root.iterfind("MeSH/automatic")] == entry["mesh_automatic"]
        assert entry["is_normal"] == (entry["mesh_major"] == ["normal"])
        images = root.findall("parentImage")
        assert [p.get("id") for p in images] == entry["image_ids"]
        for k, p in enumerate(images, start=1):
            assert re.fullmatch(rf"CXR{number}_\d+_IM-\d{{4}}-\d{{4}}", p.get("id"))
            assert p.findtext("figureId") == f"F{k}" and p.findtext("caption")
            assert p.find("panel").get("type") == "single"
            assert p.findtext("panel/url") == f"/hadoop/storage/radiology/extract/{p.get('id')}.jpg"
        parsed += 1
    assert parsed == N_REPORTS - 1  # every report file but the malformed one
    assert len(manifest["reports"]) == N_REPORTS


def test_png_archive_holds_top_level_grayscale_pngs_of_the_requested_size(faulty, pngs):
    _, manifest = faulty
    ok = manifest["expected"]["image_ids_ok"]
    assert len(ok) >= N_REPORTS
    for image_id in ok:
        img = Image.open(io.BytesIO(pngs[f"{image_id}.png"]))
        img.load()
        view = manifest["images"][image_id]["view"]
        assert img.format == "PNG" and img.mode == "L"
        assert img.size == (round(SIZE * VIEW_ASPECT[view]), SIZE)
        assert (img.width, img.height) == (manifest["images"][image_id]["width"],
                                           manifest["images"][image_id]["height"])
    views = {manifest["images"][i]["view"] for i in ok}
    assert views == {"frontal", "lateral"}


# ---------------------------------------------------------------------------------------------
# faults
# ---------------------------------------------------------------------------------------------
def test_every_documented_reason_is_expected_at_least_once(faulty):
    _, manifest = faulty
    exp = manifest["expected"]
    assert {e["reason"] for e in exp["report_exclusions"]} == {
        "malformed_xml", "no_findings_or_impression", "no_images", "unsafe_member"}
    assert {e["reason"] for e in exp["image_exclusions"]} == {
        "truncated", "not_an_image", "decompression_bomb", "missing_image", "orphan_image",
        "unsafe_member"}
    kept = set(exp["report_ids_kept"])
    assert kept == {rid for rid, r in manifest["reports"].items() if r["kept"]}
    assert not kept & {e["report_id"] for e in exp["report_exclusions"]}
    assert not set(exp["image_ids_ok"]) & {e["image_id"] for e in exp["image_exclusions"]}


def test_broken_pngs_are_in_the_archive_as_described(faulty, pngs):
    _, manifest = faulty
    faults = manifest["faults"]
    truncated = pngs[f"{faults['truncated_png']['image_id']}.png"]
    assert truncated.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(truncated) == faults["truncated_png"]["written_bytes"] == faults["truncated_png"]["full_bytes"] // 2
    img = Image.open(io.BytesIO(truncated))  # the header still reads ...
    with pytest.raises(OSError):
        img.load()  # ... the pixels do not
    with pytest.raises(OSError):
        Image.open(io.BytesIO(pngs[f"{faults['not_an_image']['image_id']}.png"]))
    bomb = pngs[f"{faults['decompression_bomb']['image_id']}.png"]
    width, height = int.from_bytes(bomb[16:20], "big"), int.from_bytes(bomb[20:24], "big")
    assert width * height == faults["decompression_bomb"]["pixels"] > 2 * MAX_PIXELS
    assert len(bomb) < 100_000
    for name in ("truncated_png", "not_an_image", "decompression_bomb", "missing_image"):
        assert faults[name]["other_valid_image_id"] in manifest["expected"]["image_ids_ok"]


def test_missing_and_orphan_images_are_named_on_one_side_only(faulty, xml_docs, pngs):
    _, manifest = faulty
    faults = manifest["faults"]
    named = {p.get("id") for name, data in xml_docs.items()
             if name != faults["malformed_xml"]["source_file"]
             for p in etree.fromstring(data, secure_parser()).iter("parentImage")}
    for key in ("missing_image", "report_without_valid_image"):
        assert faults[key]["image_id"] in named
        assert f"{faults[key]['image_id']}.png" not in pngs
    lone = manifest["reports"][faults["report_without_valid_image"]["report_id"]]
    assert lone["kept"] and lone["image_ids"] == [faults["report_without_valid_image"]["image_id"]]
    assert f"{faults['orphan_image']['image_id']}.png" in pngs
    assert faults["orphan_image"]["image_id"] not in named


def test_report_faults_are_in_the_xml_as_described(faulty, xml_docs):
    _, manifest = faulty
    faults, reports = manifest["faults"], manifest["reports"]

    def doc(key: str) -> bytes:
        return xml_docs[reports[faults[key]["report_id"]]["source_file"]]

    with pytest.raises(etree.XMLSyntaxError):
        etree.fromstring(xml_docs[faults["malformed_xml"]["source_file"]], secure_parser())
    empty = etree.fromstring(doc("no_findings_or_impression"), secure_parser())
    sections = {e.get("Label"): e.text for e in empty.iter("AbstractText")}
    assert set(sections) >= {"FINDINGS", "IMPRESSION"}
    assert not sections["FINDINGS"] and not sections["IMPRESSION"]
    assert etree.fromstring(doc("no_images"), secure_parser()).find("parentImage") is None

    xxe = doc("xxe_entity")
    assert b'<!ENTITY xxe SYSTEM "file:///etc/hostname">' in xxe and b"&xxe;" in xxe
    laughs = doc("billion_laughs")
    assert b"<!ENTITY lol3" in laughs and b"&lol3;" in laughs
    for key in ("xxe_entity", "billion_laughs"):
        root = etree.fromstring(doc(key), secure_parser())  # parses, entities left alone
        text = "".join(root.find(".//AbstractText[@Label='FINDINGS']").itertext())
        assert "lollol" not in text
        hostname = Path("/etc/hostname")
        if hostname.exists() and hostname.read_text().strip():
            assert hostname.read_text().strip() not in text
        assert reports[faults[key]["report_id"]]["kept"]

    odd = reports[faults["odd_whitespace_unicode"]["report_id"]]["sections"]
    for char in ODD_CHARACTERS:
        assert char in odd["findings"], repr(char)
    odd_xml = etree.fromstring(doc("odd_whitespace_unicode"), secure_parser())
    assert odd_xml.find(".//AbstractText[@Label='FINDINGS']").text == odd["findings"]

    redacted = reports[faults["xxxx_redactions"]["report_id"]]["sections"]
    joined = " ".join(redacted.values())
    assert "x-XXXX" in joined and "XXXX-ray" in joined
    assert faults["xxxx_redactions"]["report_id"] in faults["xxxx_redactions"]["report_ids_with_xxxx"]


def test_unsafe_members_are_in_both_archives_and_refused_by_the_archive_reader(faulty):
    out, manifest = faulty
    for archive, suffix in ((REPORTS_ARCHIVE, ".xml"), (IMAGES_ARCHIVE, ".png")):
        members = tar_members(out / archive)
        assert any(n.startswith("/") for n in members)
        assert any(".." in Path(n).parts for n in members)
        assert any(m.issym() for m in members.values())
        rejected = {e.name for e in iter_tar(out / archive, (suffix,)) if isinstance(e, Rejected)}
        assert len(rejected) == 3
        expected = manifest["expected"]["report_exclusions" if suffix == ".xml" else "image_exclusions"]
        unsafe = {e["source_file" if suffix == ".xml" else "path"] for e in expected
                  if e["reason"] == "unsafe_member"}
        assert rejected == unsafe
    png_unsafe = [e for e in manifest["expected"]["image_exclusions"] if e["reason"] == "unsafe_member"]
    assert all(e["image_id"] == Path(e["path"]).stem for e in png_unsafe)


def test_archive_reader_yields_every_report_and_image_member_it_should(faulty):
    out, manifest = faulty
    xml = [e.name for e in iter_tar(out / REPORTS_ARCHIVE, (".xml",)) if isinstance(e, Member)]
    assert sorted(xml) == sorted(r["source_file"] for r in manifest["reports"].values())
    png = {e.name[:-4] for e in iter_tar(out / IMAGES_ARCHIVE, (".png",)) if isinstance(e, Member)}
    assert png == {i for i, m in manifest["images"].items() if m["in_archive"]}


def test_faults_need_enough_reports(tmp_path: Path):
    with pytest.raises(CxrclipError, match="n_reports >= 12"):
        generate_openi(tmp_path, n_reports=5, image_size=SIZE, faults=True, progress=False)


# ---------------------------------------------------------------------------------------------
# findings show in images (measured after downscaling to 224 px)
# ---------------------------------------------------------------------------------------------
def bright_run_width(row: np.ndarray, start: int, threshold: int) -> int:
    """Length of the run of pixels > threshold through column ``start``."""
    left = right = start
    while left > 0 and row[left - 1] > threshold:
        left -= 1
    while right < len(row) - 1 and row[right + 1] > threshold:
        right += 1
    return right - left + 1 if row[start] > threshold else 0


def test_cardiomegaly_frontal_has_a_wider_bright_heart_than_normal():
    heart_row, heart_col = int(0.63 * 224), int(0.55 * 224)
    widths = {}
    for severity in (None, "mild", "moderate"):
        findings = () if severity is None else (Finding("cardiomegaly", severity=severity),)
        widths[severity] = [bright_run_width(at_224(render_image(findings, "frontal", 256, s))[heart_row],
                                             heart_col, 160) for s in range(6)]
    assert min(widths[None]) > 0.2 * 224
    assert min(widths["mild"]) > 1.25 * max(widths[None])
    assert min(widths["moderate"]) > max(widths["mild"])


@pytest.mark.parametrize("side", ["right", "left"])
def test_effusion_fills_the_lower_lung_on_its_side_only(side: str):
    normal = at_224(render_image((), "frontal", 256, 7))
    wet = at_224(render_image((Finding("pleural_effusion", side=side),), "frontal", 256, 7))
    rows = slice(int(0.62 * 224), int(0.70 * 224))
    right_cols, left_cols = slice(int(0.22 * 224), int(0.36 * 224)), slice(int(0.64 * 224), int(0.78 * 224))
    near, far = (right_cols, left_cols) if side == "right" else (left_cols, right_cols)
    assert (wet[rows, near] - normal[rows, near]).mean() > 60
    assert np.abs(wet[rows, far] - normal[rows, far]).max() == 0


@pytest.mark.parametrize("label,min_peak", [("nodule", 50), ("granuloma", 80)])
def test_nodules_and_granulomas_are_bright_spots_in_their_zone(label: str, min_peak: int):
    for side, zone, (x, y) in (("right", "upper", (0.30, 0.29)), ("left", "base", (0.70, 0.60))):
        normal = at_224(render_image((), "frontal", 256, 11))
        spot = at_224(render_image((Finding(label, side=side, zone=zone),), "frontal", 256, 11))
        diff = spot - normal
        ys, xs = np.nonzero(diff > 20)
        assert diff.max() > min_peak
        assert abs(ys.mean() / 224 - y) < 0.05 and abs(xs.mean() / 224 - x) < 0.05
        assert len(ys) < 0.01 * 224 * 224  # a spot, not a region


def test_opacity_is_a_larger_patch_than_a_nodule():
    normal = at_224(render_image((), "frontal", 256, 2))
    areas = {label: int(((at_224(render_image((Finding(label, side="left", zone="base"),),
                                               "frontal", 256, 2)) - normal) > 20).sum())
             for label in ("nodule", "opacity")}
    assert areas["opacity"] > 3 * areas["nodule"] > 0


@pytest.mark.parametrize("label,point", [("catheter", (0.40, 0.14)), ("medical_device", (0.74, 0.17))])
def test_devices_and_catheters_draw_bright_lines(label: str, point: tuple[float, float]):
    normal = at_224(render_image((), "frontal", 256, 5))
    drawn = at_224(render_image((Finding(label),), "frontal", 256, 5))
    x, y = int(point[0] * 224), int(point[1] * 224)
    assert drawn[y - 3:y + 4, x - 3:x + 4].max() > 200
    assert drawn[y - 3:y + 4, x - 3:x + 4].max() - normal[y - 3:y + 4, x - 3:x + 4].max() > 40


def test_emphysema_darkens_the_lungs():
    rows, cols = slice(int(0.35 * 224), int(0.5 * 224)), slice(int(0.25 * 224), int(0.35 * 224))
    normal = at_224(render_image((), "frontal", 256, 9))[rows, cols].mean()
    emph = at_224(render_image((Finding("emphysema"),), "frontal", 256, 9))[rows, cols].mean()
    assert normal - emph > 15


def test_lateral_view_has_one_lung_field_and_a_posterior_spine():
    frontal = at_224(render_image((), "frontal", 256, 1))
    lateral = at_224(render_image((), "lateral", 256, 1))
    y = int(0.40 * 224)
    col = {x: int(x * 224) for x in (0.30, 0.50, 0.70, 0.82)}
    assert frontal[y, col[0.50]] > frontal[y, col[0.30]] + 60  # mediastinum between two lungs
    assert frontal[y, col[0.50]] > frontal[y, col[0.70]] + 60
    assert lateral[y, col[0.50]] < lateral[y, col[0.82]] - 60  # lung field, then the spine
    mirror = lambda a: np.abs(a - a[:, ::-1]).mean()  # noqa: E731
    assert mirror(lateral) > 2 * mirror(frontal)


def test_seeds_vary_images_mildly():
    a, b = (at_224(render_image((), "frontal", 256, s)) for s in (0, 1))
    assert np.abs(a - b).mean() > 1
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9


def test_large_images_are_drawn_at_the_exact_requested_size():
    img = render_image((Finding("nodule", side="right", zone="upper"),), "lateral", 700, 0)
    assert img.shape == (700, round(700 * VIEW_ASPECT["lateral"])) and img.dtype == np.uint8


# ---------------------------------------------------------------------------------------------
# findings show in texts
# ---------------------------------------------------------------------------------------------
KEYWORDS = {
    "cardiomegaly": ("cardiomegaly", "enlarged"), "pleural_effusion": ("effusion",),
    "granuloma": ("granulom",), "nodule": ("nodule",), "opacity": ("opacity", "airspace"),
    "atelectasis": ("atelectasis",), "medical_device": ("pacemaker", "device"),
    "catheter": ("catheter", "line"), "emphysema": ("emphysema", "hyperinflation", "copd"),
}


def test_impressions_name_every_finding_and_its_side_and_normal_ones_name_none():
    reports = [make_report(n, 0) for n in range(1, 401)]
    assert set(KEYWORDS) == set(LABELS)
    n_normal = 0
    for r in reports:
        text = (r.sections["impression"] or r.sections["findings"]).lower()
        if not r.findings:
            n_normal += 1
            impression = r.sections["impression"].lower()  # normal FINDINGS may say "no effusion"
            assert not any(k in impression for ks in KEYWORDS.values() for k in ks), impression
        for f in r.findings:
            assert any(k in text for k in KEYWORDS[f.label]), (f, text)
            if f.side:
                assert f.side in text, (f, text)
    assert 0.4 < n_normal / len(reports) < 0.6
    n_images = [len(r.image_ids) for r in reports]
    assert 1.8 < np.mean(n_images) < 2.0 and {1, 2, 3} <= set(n_images)
    assert 0.3 < np.mean([any("XXXX" in v for v in r.sections.values()) for r in reports]) < 0.7


@pytest.mark.shared_data
def test_texts_are_not_copied_from_the_real_reports_and_mesh_headings_are_real():
    if not REAL_REPORTS.exists():
        pytest.skip(f"{REAL_REPORTS} absent")
    import pandas as pd

    real = pd.read_csv(REAL_REPORTS)
    real_findings = set(real["findings"].dropna())
    headings = {t.split("/")[0].strip() for m in real["MeSH"].dropna() for t in m.split(";")}
    reports = [make_report(n, 0) for n in range(1, 1001)]
    assert not [r.sections["findings"] for r in reports if r.sections["findings"] in real_findings]
    assert {m.split("/")[0] for r in reports for m in r.mesh_major} <= headings


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _params_file(tmp_path: Path, **synthetic) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["synthetic"].update(synthetic)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_cli_synth_writes_the_archives_and_prints_one_summary_line(tmp_path: Path, capsys):
    params = _params_file(tmp_path, n_reports=12, image_size=48, faults=True, seed=1)
    out = tmp_path / "synthetic"
    assert cli_main(["synth", "--params", str(params), "--out-dir", str(out), "--workers", "1"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("synth: 12 reports")
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["params"] == {"n_reports": 12, "image_size": 48, "faults": True, "seed": 1}
    assert (out / REPORTS_ARCHIVE).exists() and (out / IMAGES_ARCHIVE).exists()
    shutil.rmtree(out)


def test_cli_synth_reports_bad_settings_without_a_traceback(tmp_path: Path, capsys):
    params = _params_file(tmp_path, n_reports=5, faults=True)
    assert cli_main(["synth", "--params", str(params), "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "n_reports >= 12" in err and "Traceback" not in err
