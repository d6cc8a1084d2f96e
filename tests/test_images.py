"""Image verification and the square grayscale cache (cxrclip.data.images, `cxrclip verify-images`)."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cxrclip.cli import main as cli_main
from cxrclip.data.images import (
    IMAGE_COLUMNS,
    decode_image,
    image_id_from_name,
    read_cache_meta,
    resize_square,
    verify_and_cache,
)

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
SIZE = 32


def png_bytes(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def noise_png(seed: int, shape: tuple[int, int] = (60, 80)) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        chunks.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def build_png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = b"\x89PNG\r\n\x1a\n"
    for ctype, body in chunks:
        out += struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))
    return out


def truncated_pixel_data_png() -> bytes:
    """Valid chunk structure and CRCs, but the compressed pixel stream stops halfway."""
    chunks = png_chunks(noise_png(1))
    idat = b"".join(body for ctype, body in chunks if ctype == b"IDAT")
    return build_png([chunks[0], (b"IDAT", idat[: len(idat) // 2]), (b"IEND", b"")])


def bad_idat_crc_png() -> bytes:
    """Pixel data intact, only the IDAT chunk's CRC is wrong (load() skips that CRC)."""
    data = bytearray(noise_png(2))
    pos = 8
    while data[pos + 4:pos + 8] != b"IDAT":
        pos += 12 + struct.unpack(">I", data[pos:pos + 4])[0]
    length = struct.unpack(">I", data[pos:pos + 4])[0]
    data[pos + 8 + length] ^= 0xFF
    return bytes(data)


def write_tgz(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def reports_table(image_ids_by_report: dict[str, list[str]]) -> pd.DataFrame:
    return pd.DataFrame({"report_id": list(image_ids_by_report),
                         "image_ids": list(image_ids_by_report.values())})


def run_verify(tmp_path: Path, members: dict[str, bytes], reports: pd.DataFrame, *, workers: int = 1,
               size: int = SIZE, resize: str = "shorter_side_center_crop", max_pixels: int = 10**7,
               symlinks: dict[str, str] | None = None, cache_name: str = "cache.npy"):
    archive = write_tgz(tmp_path / "png.tgz", members, symlinks)
    return verify_and_cache(archive, reports, tmp_path / cache_name, size=size, resize=resize,
                            max_pixels=max_pixels, workers=workers, progress=False)


def reason_of(exclusions: pd.DataFrame, image_id: str) -> str:
    return exclusions.set_index("image_id").loc[image_id, "reason"]


def test_truncated_png_is_excluded_as_truncated_although_verify_passes(tmp_path):
    bad = truncated_pixel_data_png()
    Image.open(io.BytesIO(bad)).verify()  # verify() alone lets it through
    images, excl = run_verify(tmp_path, {"CXR1_1_IM-0001-1001.png": bad, "CXR1_1_IM-0001-2001.png": noise_png(3)},
                              reports_table({"CXR1": ["CXR1_1_IM-0001-1001", "CXR1_1_IM-0001-2001"]}))
    assert reason_of(excl, "CXR1_1_IM-0001-1001") == "truncated"
    row = images.set_index("image_id").loc["CXR1_1_IM-0001-1001"]
    assert (row["ok"], row["error"], row["cache_index"]) == (False, "truncated", -1)
    assert images.set_index("image_id").loc["CXR1_1_IM-0001-2001", "ok"]


def test_png_cut_mid_file_is_excluded_as_truncated(tmp_path):
    data = noise_png(4)
    images, excl = run_verify(tmp_path, {"CXR2_IM-1.png": data[: len(data) // 2]},
                              reports_table({"CXR2": ["CXR2_IM-1"]}))
    assert reason_of(excl, "CXR2_IM-1") == "truncated"


def test_bad_chunk_crc_that_load_misses_is_caught_by_verify(tmp_path):
    bad = bad_idat_crc_png()
    Image.open(io.BytesIO(bad)).load()  # load() alone lets it through
    _, excl = run_verify(tmp_path, {"CXR3_IM-1.png": bad}, reports_table({"CXR3": ["CXR3_IM-1"]}))
    assert reason_of(excl, "CXR3_IM-1") == "corrupt_image"


def test_non_image_bytes_are_excluded_as_not_an_image(tmp_path):
    images, excl = run_verify(tmp_path, {"CXR4_IM-1.png": b"<html>not found</html>"},
                              reports_table({"CXR4": ["CXR4_IM-1"]}))
    assert reason_of(excl, "CXR4_IM-1") == "not_an_image"
    assert images.loc[0, "width"] == 0 and not images.loc[0, "ok"]


def test_image_above_max_pixels_is_excluded_as_decompression_bomb(tmp_path):
    big = png_bytes(np.zeros((100, 100), dtype=np.uint8))  # 10,000 px
    small = png_bytes(np.zeros((10, 10), dtype=np.uint8))
    images, excl = run_verify(tmp_path, {"CXR5_IM-1.png": big, "CXR5_IM-2.png": small},
                              reports_table({"CXR5": ["CXR5_IM-1", "CXR5_IM-2"]}), max_pixels=2_000)
    assert reason_of(excl, "CXR5_IM-1") == "decompression_bomb"
    assert list(images["ok"]) == [False, True]


@pytest.mark.parametrize("max_pixels", [1_000, 30_000])  # > 2x (PIL error) and 1.33x (PIL warning)
def test_decompression_bomb_guard_follows_max_pixels(max_pixels):
    huge = png_bytes(np.zeros((200, 200), dtype=np.uint8))  # 40,000 px
    assert decode_image(huge, size=8, resize="squash", max_pixels=max_pixels).reason == "decompression_bomb"
    assert decode_image(huge, size=8, resize="squash", max_pixels=40_000).ok
    assert Image.MAX_IMAGE_PIXELS == 89478485  # the process-wide PIL limit is restored


def test_missing_and_orphan_images_are_excluded_with_reasons(tmp_path):
    images, excl = run_verify(
        tmp_path, {"CXR6_IM-1.png": noise_png(5), "CXR99_IM-9.png": noise_png(6)},
        reports_table({"CXR6": ["CXR6_IM-1", "CXR6_IM-2"]}))
    by_id = excl.set_index("image_id")
    assert by_id.loc["CXR6_IM-2", "reason"] == "missing_image"
    assert by_id.loc["CXR6_IM-2", "report_id"] == "CXR6" and pd.isna(by_id.loc["CXR6_IM-2", "path"])
    assert by_id.loc["CXR99_IM-9", "reason"] == "orphan_image"
    assert pd.isna(by_id.loc["CXR99_IM-9", "report_id"])
    orphan = images.set_index("image_id").loc["CXR99_IM-9"]
    assert (orphan["ok"], orphan["cache_index"], orphan["width"]) == (False, -1, 80)  # header read
    assert set(images["image_id"]) == {"CXR6_IM-1", "CXR99_IM-9"}  # missing files have no row


def test_unsafe_member_and_duplicate_id_are_excluded(tmp_path):
    images, excl = run_verify(
        tmp_path, {"a/CXR7_IM-1.png": noise_png(7), "b/CXR7_IM-1.png": noise_png(8)},
        reports_table({"CXR7": ["CXR7_IM-1", "CXR7_IM-2"]}),
        symlinks={"CXR7_IM-2.png": "/etc/passwd"})
    reasons = excl.set_index("path")["reason"].to_dict()
    assert reasons == {"b/CXR7_IM-1.png": "duplicate_image", "CXR7_IM-2.png": "unsafe_member"}
    assert images.set_index("path").loc["a/CXR7_IM-1.png", "cache_index"] == 0


@pytest.mark.parametrize("policy", ["shorter_side_center_crop", "squash", "pad"])
@pytest.mark.parametrize("shape", [(50, 120), (120, 50), (7, 9)])
def test_every_resize_policy_gives_a_square_of_the_cache_size(policy, shape):
    img = Image.fromarray(np.full(shape, 200, dtype=np.uint8))
    out = np.asarray(resize_square(img, SIZE, policy))
    assert out.shape == (SIZE, SIZE) and out.dtype == np.uint8


@pytest.mark.parametrize("transpose", [False, True])
def test_shorter_side_center_crop_keeps_the_centre(transpose):
    # 300 x 100 px: black | white | black thirds; the centred square is the white third
    pixels = np.zeros((100, 300), dtype=np.uint8)
    pixels[:, 100:200] = 255
    off_centre = np.zeros((100, 300), dtype=np.uint8)
    off_centre[:, :100] = 255
    if transpose:
        pixels, off_centre = pixels.T.copy(), off_centre.T.copy()
    same_scale = np.asarray(resize_square(Image.fromarray(pixels), 100, "shorter_side_center_crop"))
    assert (same_scale == 255).all()
    shifted = np.asarray(resize_square(Image.fromarray(off_centre), 100, "shorter_side_center_crop"))
    assert (shifted == 0).all()
    # downscaled: equal to CLIP's resize-shorter-side-then-centre-crop (offset 40 px is exact here)
    small = np.asarray(resize_square(Image.fromarray(pixels), 40, "shorter_side_center_crop"))
    full = np.asarray(Image.fromarray(pixels).resize((40, 120) if transpose else (120, 40), Image.BICUBIC))
    reference = full[40:80, :] if transpose else full[:, 40:80]
    np.testing.assert_array_equal(small, reference)
    profile = small[:, 0] if transpose else small[0]
    np.testing.assert_array_equal(profile, profile[::-1])  # symmetric: the crop is centred


def test_pad_keeps_aspect_ratio_with_black_bars():
    out = np.asarray(resize_square(Image.fromarray(np.full((50, 100), 255, np.uint8)), 40, "pad"))
    assert (out[:10] == 0).all() and (out[-10:] == 0).all() and (out[10:30] == 255).all()


def test_sixteen_bit_image_is_scaled_not_clipped():
    ramp = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)  # 12-bit data
    decoded = decode_image(png_bytes(ramp), size=64, resize="squash", max_pixels=10**6)
    assert decoded.mode.startswith("I")
    assert decoded.pixels.min() <= 2 and decoded.pixels.max() >= 253
    assert np.all(np.diff(decoded.pixels.astype(int), axis=1) >= -1)  # still a ramp


def test_rgb_image_is_cached_as_grayscale_and_mode_recorded(tmp_path):
    rgb = np.zeros((40, 40, 3), dtype=np.uint8)
    rgb[..., 1] = 255
    images, _ = run_verify(tmp_path, {"CXR8_IM-1.png": png_bytes(rgb)}, reports_table({"CXR8": ["CXR8_IM-1"]}))
    cache = np.load(tmp_path / "cache.npy")
    assert images.loc[0, "mode"] == "RGB"
    assert cache.shape == (1, SIZE, SIZE) and abs(int(cache[0].mean()) - 150) <= 2  # L = 0.587 * 255


def varied_archive(n_reports: int = 12) -> tuple[dict[str, bytes], pd.DataFrame]:
    members, owners = {}, {}
    for r in range(n_reports):
        ids = [f"CXR{r}_IM-{r:04d}-{k}001" for k in (1, 2)]
        owners[f"CXR{r}"] = ids
        for k, image_id in enumerate(ids):
            members[f"NLMCXR_png/{image_id}.png"] = noise_png(10 * r + k, (40 + r, 70 - r))
    members["NLMCXR_png/CXR3_IM-0003-1001.png"] = truncated_pixel_data_png()
    members["NLMCXR_png/CXR500_IM-1.png"] = noise_png(99)  # orphan
    return members, reports_table(owners)


def test_cache_rows_match_images_cache_index_and_json(tmp_path):
    members, reports = varied_archive()
    images, _ = run_verify(tmp_path, members, reports)
    cache = np.load(tmp_path / "cache.npy", mmap_mode="r")
    meta = read_cache_meta(tmp_path / "cache.npy")
    ok = images[images["ok"]]
    assert cache.shape == (len(ok), SIZE, SIZE) and cache.dtype == np.uint8
    assert list(ok["cache_index"]) == list(range(len(ok)))
    assert meta == {"size": SIZE, "resize": "shorter_side_center_crop", "n": len(ok),
                    "image_ids": list(ok["image_id"])}
    for _, row in ok.iterrows():  # each cache row is that image, decoded alone
        alone = decode_image(members[row["path"]], size=SIZE, resize="shorter_side_center_crop",
                             max_pixels=10**7)
        np.testing.assert_array_equal(cache[row["cache_index"]], alone.pixels)
    assert list(images.columns) == list(IMAGE_COLUMNS)


def test_multiprocess_result_equals_single_process(tmp_path):
    members, reports = varied_archive()
    single = run_verify(tmp_path, members, reports, workers=1, cache_name="one.npy")
    multi = run_verify(tmp_path, members, reports, workers=2, cache_name="two.npy")
    pd.testing.assert_frame_equal(single[0], multi[0])
    pd.testing.assert_frame_equal(single[1], multi[1])
    np.testing.assert_array_equal(np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy"))


def test_no_usable_image_gives_an_empty_but_valid_cache(tmp_path):
    images, excl = run_verify(tmp_path, {"CXR9_IM-1.png": b"junk"}, reports_table({"CXR9": ["CXR9_IM-1"]}))
    assert np.load(tmp_path / "cache.npy").shape == (0, SIZE, SIZE)
    assert list(excl["reason"]) == ["not_an_image"]


def test_image_ids_drop_folders_and_png_suffixes():
    assert image_id_from_name("NLMCXR_png/CXR1_1_IM-0001-4001.png") == "CXR1_1_IM-0001-4001"
    assert image_id_from_name("x/CXR2_IM-0652-1001.dcm.PNG") == "CXR2_IM-0652-1001"


def test_cli_writes_tables_and_cache_and_fails_cleanly_without_reports(tmp_path, capsys):
    members, reports = varied_archive(4)
    archive = write_tgz(tmp_path / "png.tgz", members)
    reports.to_parquet(tmp_path / "reports.parquet")
    args = ["verify-images", "--params", str(PARAMS), "--archive", str(archive),
            "--reports", str(tmp_path / "reports.parquet"), "--out", str(tmp_path / "images.parquet"),
            "--exclusions-out", str(tmp_path / "excl.parquet"), "--cache", str(tmp_path / "c.npy"),
            "--no-progress"]
    assert cli_main(args) == 0
    images = pd.read_parquet(tmp_path / "images.parquet")
    assert np.load(tmp_path / "c.npy").shape == (int(images["ok"].sum()), 224, 224)
    assert json.loads((tmp_path / "c.json").read_text())["n"] == int(images["ok"].sum())
    assert set(pd.read_parquet(tmp_path / "excl.parquet")["reason"]) == {"truncated", "orphan_image"}
    missing = [a if a != str(tmp_path / "reports.parquet") else str(tmp_path / "nope.parquet") for a in args]
    assert cli_main(missing) == 2
    assert "reports table not found" in capsys.readouterr().err


def test_cli_kaggle_kind_reads_the_images_folder_and_projection_views(tmp_path):
    kaggle = tmp_path / "kaggle"
    (kaggle / "images" / "images_normalized").mkdir(parents=True)
    for name, seed in (("1_IM-0001-4001.dcm.png", 1), ("1_IM-0001-3001.dcm.png", 2)):
        (kaggle / "images" / "images_normalized" / name).write_bytes(noise_png(seed))
    (kaggle / "indiana_projections.csv").write_text(
        "uid,filename,projection\n1,1_IM-0001-4001.dcm.png,Frontal\n1,1_IM-0001-3001.dcm.png,Lateral\n")
    reports_table({"CXR1": ["CXR1_IM-0001-4001", "CXR1_IM-0001-3001"]}).to_parquet(tmp_path / "reports.parquet")
    params = yaml.safe_load(PARAMS.read_text())
    params["source"].update(kind="kaggle", kaggle_dir=str(kaggle))
    params["images"].update(size=SIZE, workers=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code = cli_main(["verify-images", "--params", str(tmp_path / "params.yaml"),
                     "--reports", str(tmp_path / "reports.parquet"), "--out", str(tmp_path / "images.parquet"),
                     "--exclusions-out", str(tmp_path / "excl.parquet"), "--cache", str(tmp_path / "c.npy"),
                     "--no-progress"])
    assert code == 0
    images = pd.read_parquet(tmp_path / "images.parquet").set_index("image_id")
    assert images["view"].to_dict() == {"CXR1_IM-0001-3001": "lateral", "CXR1_IM-0001-4001": "frontal"}
    assert images["ok"].all() and np.load(tmp_path / "c.npy").shape == (2, SIZE, SIZE)


def test_synthetic_faults_give_exactly_the_manifest_image_exclusions(tmp_path):
    synthetic = pytest.importorskip("cxrclip.data.synthetic")
    reports_mod = pytest.importorskip("cxrclip.data.reports")
    manifest = synthetic.generate_openi(tmp_path, n_reports=14, image_size=64, faults=True, seed=0,
                                        workers=1, progress=False)
    text_cfg = yaml.safe_load(PARAMS.read_text())["text"]
    reports, _ = reports_mod.parse_openi_archive(tmp_path / "NLMCXR_reports.tgz", text_cfg, progress=False)
    images, excl = verify_and_cache(tmp_path / "NLMCXR_png.tgz", reports, tmp_path / "c.npy", size=SIZE,
                                    resize="squash", max_pixels=89478485, workers=2, progress=False)
    expected = pd.DataFrame(manifest["expected"]["image_exclusions"])
    assert sorted(map(tuple, excl[["image_id", "reason"]].values)) == \
        sorted(map(tuple, expected[["image_id", "reason"]].values))
    assert int(images["ok"].sum()) == np.load(tmp_path / "c.npy").shape[0] > 0
