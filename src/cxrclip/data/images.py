"""Verify every image once and cache it as a square uint8 grayscale array (``images_224.npy``).

One pass over the archive (or folder): members are streamed, fed to a process pool, each image is
decoded once and completely (``Image.load()`` catches truncated pixel data that ``Image.verify()``
misses; ``verify()`` is also run because it checks the chunk CRCs that ``load()`` skips), converted
to 8-bit grayscale, resized to ``S x S`` with the chosen policy and written into a preallocated
``np.lib.format.open_memmap``. Rows of the cache follow archive order; ``images.parquet`` records
each image's ``cache_index``.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from cxrclip.data.archive import Member, Rejected, iter_source
from cxrclip.data.io import atomic_path, write_json
from cxrclip.errors import CxrclipError

log = logging.getLogger(__name__)

RESIZE_POLICIES = ("shorter_side_center_crop", "squash", "pad")
IMAGE_SUFFIXES = (".png",)

# Reasons (``image_exclusions.parquet`` / ``images.parquet:error``).
TRUNCATED = "truncated"
CORRUPT = "corrupt_image"  # extension of the contract: PNG chunk CRC / data-stream errors
NOT_AN_IMAGE = "not_an_image"
DECOMPRESSION_BOMB = "decompression_bomb"
MISSING_IMAGE = "missing_image"
ORPHAN_IMAGE = "orphan_image"
DUPLICATE_IMAGE = "duplicate_image"  # extension: a second member with an already-seen image id
UNSAFE_MEMBER = "unsafe_member"

IMAGE_COLUMNS = {
    "image_id": "str", "report_id": "object", "path": "str", "view": "str", "width": "int64",
    "height": "int64", "mode": "str", "bytes": "int64", "ok": "bool", "error": "str",
    "cache_index": "int64",
}
EXCLUSION_COLUMNS = {"image_id": "str", "report_id": "object", "path": "object", "reason": "str",
                     "detail": "str"}  # path None: missing_image (no file)

#: ``reducing_gap`` for downscaling: PIL first box-reduces by an integer factor, then resamples
#: with bicubic over at least 2x the target size; ~4x faster than plain bicubic from 2048 px,
#: at most 2 grey levels from it.
REDUCING_GAP = 2.0
_HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")

# Decode tasks: (action, member name, bytes or detail).
_DECODE, _HEADER, _REJECTED = "decode", "header", "rejected"


@dataclass(frozen=True)
class DecodedImage:
    """What one decode produced: original ``width``/``height`` (px, 0 if unreadable), PIL ``mode``,
    ``reason`` ("" when ok) with ``detail``, and ``pixels`` (uint8, (S, S)) when fully decoded."""

    width: int
    height: int
    mode: str
    reason: str = ""
    detail: str = ""
    pixels: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.reason == ""


# ---------------------------------------------------------------------------------------------
# naming


def image_id_from_name(name: str) -> str:
    """Open-i image id of a member name: file name without folders and ``.dcm.png``/``.png``.

    ``NLMCXR_png/CXR1_1_IM-0001-4001.png`` -> ``CXR1_1_IM-0001-4001``.
    """
    base = PurePosixPath(name.replace("\\", "/")).name
    for suffix in (".dcm.png", ".png"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


# ---------------------------------------------------------------------------------------------
# decoding one image


@contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """Make PIL treat images above ``max_pixels`` as decompression bombs (warning -> error)."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def to_grayscale(img: Image.Image) -> Image.Image:
    """8-bit grayscale (mode ``L``) version of a loaded image.

    16-bit / integer / float images are min-max scaled to 0..255 (``convert("L")`` would clip them
    to white); other modes use PIL's luminance conversion (alpha ignored).
    """
    if img.mode == "L":
        return img
    if img.mode in _HIGH_BIT_MODES:
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")
    return img.convert("L")


def resize_square(img: Image.Image, size: int, policy: str) -> Image.Image:
    """Resize a grayscale image to ``size x size`` px.

    ``shorter_side_center_crop`` (CLIP): scale the shorter side to ``size`` (bicubic) and keep the
    centred square -- done as one resample of the exactly centred square box; ``squash``: scale
    both sides to ``size`` (aspect ratio lost); ``pad``: scale the longer side to ``size`` and
    centre on a black square.
    """
    w, h = img.size
    if policy == "shorter_side_center_crop":
        side = min(w, h)
        left, top = (w - side) / 2.0, (h - side) / 2.0
        return img.resize((size, size), Image.Resampling.BICUBIC,
                          box=(left, top, left + side, top + side), reducing_gap=REDUCING_GAP)
    if policy == "squash":
        return img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=REDUCING_GAP)
    if policy == "pad":
        scale = size / max(w, h)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        inner = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=REDUCING_GAP)
        canvas = Image.new("L", (size, size), 0)
        canvas.paste(inner, ((size - new_w) // 2, (size - new_h) // 2))
        return canvas
    raise CxrclipError(f"unknown resize policy {policy!r} (choose from {', '.join(RESIZE_POLICIES)})")


def _classify_decode_error(exc: BaseException) -> str:
    message = str(exc).lower()
    if isinstance(exc, EOFError) or "truncated" in message:
        return TRUNCATED
    return CORRUPT


def decode_image(data: bytes, *, size: int, resize: str, max_pixels: int,
                 header_only: bool = False) -> DecodedImage:
    """Decode PNG (or any PIL format) ``data`` fully and return its (S, S) uint8 grayscale pixels.

    Failures never raise; they come back as ``reason``: ``not_an_image`` (not identifiable),
    ``decompression_bomb`` (more than ``max_pixels`` px), ``truncated`` (pixel data ends early),
    ``corrupt_image`` (CRC or data-stream error). ``header_only`` reads just size and mode.
    """
    with _pixel_limit(max_pixels):
        try:
            img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return DecodedImage(0, 0, "", DECOMPRESSION_BOMB, str(exc))
        except UnidentifiedImageError as exc:
            return DecodedImage(0, 0, "", NOT_AN_IMAGE, str(exc))
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            return DecodedImage(0, 0, "", NOT_AN_IMAGE, f"{type(exc).__name__}: {exc}")
        width, height, mode = img.width, img.height, img.mode
        if width * height > max_pixels:  # PIL checks at open too; keep the contract explicit
            return DecodedImage(width, height, mode, DECOMPRESSION_BOMB,
                                f"{width}x{height} = {width * height} px > max_pixels {max_pixels}")
        if header_only:
            return DecodedImage(width, height, mode)
        try:
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return DecodedImage(width, height, mode, DECOMPRESSION_BOMB, str(exc))
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
            return DecodedImage(width, height, mode, _classify_decode_error(exc),
                                f"{type(exc).__name__}: {exc}")
        try:  # CRCs of every chunk (load() skips IDAT CRCs); ~5% of the decode time
            Image.open(io.BytesIO(data)).verify()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            return DecodedImage(width, height, mode, _classify_decode_error(exc),
                                f"verify: {type(exc).__name__}: {exc}")
    square = resize_square(to_grayscale(img), size, resize)
    return DecodedImage(width, height, mode, pixels=np.asarray(square, dtype=np.uint8))


def _decode_task(task: tuple[str, str, Any], *, size: int, resize: str,
                 max_pixels: int) -> tuple[str, str, int, DecodedImage | None]:
    """Pool worker: ``(action, name, payload)`` -> ``(action, name, n_bytes, DecodedImage | None)``."""
    action, name, payload = task
    if action == _REJECTED:
        return action, name, 0, None
    return action, name, len(payload), decode_image(
        payload, size=size, resize=resize, max_pixels=max_pixels, header_only=action == _HEADER)


# ---------------------------------------------------------------------------------------------
# parallel map with bounded memory


def resolve_workers(workers: int) -> int:
    """``0`` -> ``os.cpu_count()``; negative values are an error."""
    if workers < 0:
        raise CxrclipError(f"images.workers must be >= 0 (0 = all cores), got {workers}")
    return workers or (os.cpu_count() or 1)


def ordered_parallel_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int,
                         chunksize: int = 2, max_in_flight: int | None = None) -> Iterator[Any]:
    """``map(fn, items)`` over a process pool, results in input order.

    ``Pool.imap`` reads its input eagerly; here at most ``max_in_flight`` items (default
    ``4 * workers * chunksize``) are read ahead of the consumer, so a large archive is never held
    in memory. ``workers == 1`` runs in this process.
    """
    if workers == 1:
        yield from map(fn, items)
        return
    limit = max(max_in_flight or 4 * workers * chunksize, 2 * chunksize)
    slots = threading.Semaphore(limit)
    stop = threading.Event()

    def throttled() -> Iterator[Any]:
        for item in items:
            while not slots.acquire(timeout=0.05):
                if stop.is_set():
                    return
            yield item

    with multiprocessing.get_context().Pool(workers) as pool:
        try:
            for result in pool.imap(fn, throttled(), chunksize):
                slots.release()
                yield result
        finally:
            stop.set()


# ---------------------------------------------------------------------------------------------
# cache file


def _shrink_npy(path: Path, n_rows: int) -> None:
    """Rewrite the ``.npy`` header of ``path`` to ``n_rows`` rows and cut the file after them.

    The new header is padded to the old header's length, so the data offset does not move.
    """
    with open(path, "r+b") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = read_header(fh)
        data_offset = fh.tell()
        prefix_len = 6 + 2 + (2 if version == (1, 0) else 4)  # magic, version, header length
        new_shape = (n_rows, *shape[1:])
        header = (f"{{'descr': {np.lib.format.dtype_to_descr(dtype)!r}, "
                  f"'fortran_order': {fortran_order}, 'shape': {new_shape}, }}")
        header = header.ljust(data_offset - prefix_len - 1) + "\n"
        if len(header) != data_offset - prefix_len:  # pragma: no cover - a shrinking shape fits
            raise RuntimeError(f"{path}: new .npy header does not fit")
        fh.seek(prefix_len)
        fh.write(header.encode("latin1"))
        fh.truncate(data_offset + n_rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)


def cache_meta_path(cache: str | Path) -> Path:
    """``images_224.npy`` -> ``images_224.json`` (written beside the cache)."""
    return Path(cache).with_suffix(".json")


def read_cache_meta(cache: str | Path) -> dict[str, Any]:
    """The JSON written beside the cache: ``size``, ``resize``, ``n``, ``image_ids`` (cache order)."""
    return json.loads(cache_meta_path(cache).read_text())


# ---------------------------------------------------------------------------------------------
# the stage


def _image_owners(reports: pd.DataFrame) -> dict[str, str]:
    """``image_id -> report_id`` from ``reports.image_ids``; the first report (table order) wins."""
    if not {"report_id", "image_ids"} <= set(reports.columns):
        raise CxrclipError("reports table needs columns 'report_id' and 'image_ids'")
    owners: dict[str, str] = {}
    for report_id, image_ids in zip(reports["report_id"], reports["image_ids"], strict=True):
        for image_id in (image_ids if image_ids is not None else []):
            owners.setdefault(str(image_id), str(report_id))
    return owners


def _frame(rows: list[dict[str, Any]], columns: dict[str, str]) -> pd.DataFrame:
    """Rows -> DataFrame with exactly ``columns`` (name -> dtype), also when empty."""
    return pd.DataFrame(rows, columns=list(columns)).astype(columns)


def verify_and_cache(source: Path, reports: pd.DataFrame, out_cache: Path, *, size: int,
                     resize: str, max_pixels: int, workers: int,
                     views: pd.DataFrame | None = None, progress: bool = True,
                     id_from_name: Callable[[str], str] = image_id_from_name,
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check every image of ``source`` (tgz or folder) and cache the usable ones.

    Returns ``(images, exclusions)`` (schemas: docs/architecture.md) and writes ``out_cache``
    (uint8, (N, size, size)) plus its JSON beside it. Images named by no report are
    ``orphan_image`` (header read only, not cached); report image ids with no file are
    ``missing_image``. ``views`` (``image_id``, ``view``) fills the ``view`` column (else
    ``unknown``); ``id_from_name`` maps member names to image ids
    (:func:`cxrclip.data.kaggle.kaggle_image_id` for the Kaggle layout). ``workers``: processes,
    0 = all cores. A second member with an already-seen image id is ``duplicate_image``.
    """
    if resize not in RESIZE_POLICIES:
        raise CxrclipError(f"unknown resize policy {resize!r} (choose from {', '.join(RESIZE_POLICIES)})")
    if size < 1 or max_pixels < 1:
        raise CxrclipError(f"images.size and images.max_pixels must be positive (got {size}, {max_pixels})")
    n_workers = resolve_workers(workers)
    owners = _image_owners(reports)
    view_of = dict(zip(views["image_id"], views["view"], strict=True)) if views is not None else {}
    out_cache = Path(out_cache)

    def tasks() -> Iterator[tuple[str, str, Any]]:
        seen: set[str] = set()
        for item in iter_source(source, IMAGE_SUFFIXES):
            if isinstance(item, Rejected):
                yield _REJECTED, item.name, item.detail
                continue
            assert isinstance(item, Member)
            image_id = id_from_name(item.name)
            wanted = image_id in owners and image_id not in seen
            seen.add(image_id)
            yield (_DECODE if wanted else _HEADER), item.name, item.data

    rows: list[dict[str, Any]] = []
    exclusions: list[dict[str, Any]] = []
    cached_ids: list[str] = []
    present: set[str] = set()
    worker = partial(_decode_task, size=size, resize=resize, max_pixels=max_pixels)
    capacity = len(owners)

    with atomic_path(out_cache) as tmp:
        cache = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                          shape=(capacity, size, size)) if capacity else None
        results = ordered_parallel_map(worker, tasks(), n_workers)
        bar = tqdm(results, desc="verify images", unit="img", disable=not progress)
        for action, name, n_bytes, decoded in bar:
            image_id = id_from_name(name)
            report_id = owners.get(image_id)
            if action == _REJECTED:
                present.add(image_id)
                exclusions.append({"image_id": image_id, "report_id": report_id, "path": name,
                                   "reason": UNSAFE_MEMBER, "detail": "refused by the archive reader"})
                continue
            assert decoded is not None
            row = {"image_id": image_id, "report_id": report_id, "path": name,
                   "view": view_of.get(image_id, "unknown"), "width": decoded.width,
                   "height": decoded.height, "mode": decoded.mode, "bytes": n_bytes, "ok": False,
                   "error": decoded.reason, "cache_index": -1}
            reason, detail = decoded.reason, decoded.detail
            if action == _HEADER:
                if image_id in present:
                    reason, detail = DUPLICATE_IMAGE, f"image id {image_id} already seen in an earlier member"
                else:
                    report_id = row["report_id"] = None
                    reason, detail = ORPHAN_IMAGE, "no kept report names this image"
                    if decoded.reason:
                        detail += f" (header check: {decoded.reason})"
            present.add(image_id)
            if reason == "" and decoded.pixels is not None and cache is not None:
                row.update(ok=True, cache_index=len(cached_ids))
                cache[len(cached_ids)] = decoded.pixels
                cached_ids.append(image_id)
            else:
                row["error"] = reason
                exclusions.append({"image_id": image_id, "report_id": report_id, "path": name,
                                   "reason": reason, "detail": detail})
            rows.append(row)
        if cache is not None:
            cache.flush()
            del cache
            _shrink_npy(tmp, len(cached_ids))
        else:
            with open(tmp, "wb") as fh:
                np.save(fh, np.zeros((0, size, size), dtype=np.uint8), allow_pickle=False)
    for image_id, report_id in owners.items():
        if image_id not in present:
            exclusions.append({"image_id": image_id, "report_id": report_id, "path": None,
                               "reason": MISSING_IMAGE,
                               "detail": f"named by report {report_id}; no such file in {source}"})
    write_json({"size": size, "resize": resize, "n": len(cached_ids), "image_ids": cached_ids},
               cache_meta_path(out_cache))
    images = _frame(rows, IMAGE_COLUMNS)
    excluded = _frame(exclusions, EXCLUSION_COLUMNS)
    log.info("images: %d examined, %d cached, %d excluded %s", len(images), len(cached_ids),
             len(excluded), excluded["reason"].value_counts().to_dict() if len(excluded) else {})
    return images, excluded
