"""Training data from the uint8 image cache: no PNG decoding in the loop, normalisation on the device.

A split is held as a :class:`PairSet`: the split's cache rows copied once into a uint8 tensor
(n_pairs, S, S), its unique texts tokenised once (n_texts, context_length), and per-pair integer
indices (text row, report group, normalised-text group). An epoch is a (n_batches, batch_size) array of
pair rows (:func:`epoch_batches`), a pure function of ``(seed, epoch)`` so a resumed run replays the
same order. Under torchrun each rank takes its slice of every global batch (:func:`rank_slice`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from cxrclip.errors import CxrclipError
from cxrclip.evaluation.candidates import normalise

log = logging.getLogger(__name__)

PAIR_COLUMNS = ("pair_id", "report_id", "cache_index", "split", "text")


@dataclass
class PairSet:
    """The image–report pairs of one split, ready for the device.

    ``pairs``: the split's rows sorted by ``pair_id`` (row ``i`` is pair ``i`` below);
    ``images``: uint8 (n_pairs, S, S) CPU tensor; ``tokens``: int64 (n_texts, context_length), one row
    per unique raw text; ``token_row``: int64 (n_pairs,) row of ``tokens``; ``report_group``: int64
    (n_pairs,) report id as 0..n_reports-1; ``text_group``: int64 (n_pairs,) normalised text
    (:func:`cxrclip.evaluation.candidates.normalise`) as 0..n_groups-1 — pairs sharing it are false
    negatives of each other.
    """

    pairs: pd.DataFrame
    images: torch.Tensor
    tokens: torch.Tensor
    token_row: torch.Tensor
    report_group: torch.Tensor
    text_group: torch.Tensor

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def n_reports(self) -> int:
        return int(self.report_group.max().item()) + 1 if len(self) else 0

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])


def read_pairs(pairs_path: str | Path) -> pd.DataFrame:
    """Read ``pairs.parquet`` and check the columns training needs."""
    path = Path(pairs_path)
    if not path.exists():
        raise CxrclipError(f"pairs table not found: {path} (run the build-splits stage first)")
    pairs = pd.read_parquet(path)
    missing = sorted(set(PAIR_COLUMNS) - set(pairs.columns))
    if missing:
        raise CxrclipError(f"{path} lacks column(s) {missing}")
    return pairs


def open_cache(cache_path: str | Path) -> np.ndarray:
    """Memory-map the uint8 (N, S, S) image cache; raise :class:`CxrclipError` if it is not one."""
    path = Path(cache_path)
    if not path.exists():
        raise CxrclipError(f"image cache not found: {path} (run the verify-images stage first)")
    try:
        cache = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CxrclipError(f"cannot read image cache {path}: {exc}") from exc
    if cache.dtype != np.uint8 or cache.ndim != 3 or cache.shape[1] != cache.shape[2]:
        raise CxrclipError(f"{path} must hold uint8 (N, S, S) images, got {cache.dtype} {cache.shape}")
    return cache


def build_pair_set(pairs_split: pd.DataFrame, cache: np.ndarray, tokenizer: Callable) -> PairSet:
    """Load the cache rows and tokens of ``pairs_split`` (any order; sorted by ``pair_id`` here)."""
    pairs = pairs_split.sort_values("pair_id", kind="stable").reset_index(drop=True)
    rows = pairs["cache_index"].to_numpy(dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= len(cache)):
        bad = int(((rows < 0) | (rows >= len(cache))).sum())
        raise CxrclipError(
            f"{bad} pair(s) point outside the image cache (cache_index must be in [0, {len(cache)})); "
            "rebuild the cache and the splits together"
        )
    images = torch.from_numpy(np.ascontiguousarray(cache[np.sort(rows)]))
    # cache[sorted rows] reads the memmap sequentially; put rows back in pair order
    order = np.argsort(np.argsort(rows, kind="stable"), kind="stable")
    images = images[torch.from_numpy(order)] if len(rows) else images
    texts = pairs["text"].astype(str).tolist()
    unique_texts, token_row = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    tokens = tokenizer(list(unique_texts)) if len(unique_texts) else torch.zeros((0, 1), dtype=torch.long)
    _, report_group = np.unique(pairs["report_id"].astype(str).to_numpy(), return_inverse=True)
    _, text_group = np.unique(np.asarray([normalise(t) for t in texts], dtype=object), return_inverse=True)
    return PairSet(
        pairs=pairs,
        images=images,
        tokens=tokens.long(),
        token_row=torch.from_numpy(token_row.astype(np.int64).reshape(-1)),
        report_group=torch.from_numpy(report_group.astype(np.int64).reshape(-1)),
        text_group=torch.from_numpy(text_group.astype(np.int64).reshape(-1)),
    )


def load_splits(
    pairs_path: str | Path, cache_path: str | Path, tokenizer: Callable, splits: Sequence[str] = ("train", "val")
) -> dict[str, PairSet]:
    """``{split: PairSet}`` for ``splits`` from ``pairs.parquet`` and the image cache."""
    pairs = read_pairs(pairs_path)
    cache = open_cache(cache_path)
    return {name: build_pair_set(pairs[pairs["split"] == name], cache, tokenizer) for name in splits}


def steps_per_epoch(pair_set: PairSet, batch_size: int, sampling: str) -> int:
    """Optimizer steps per epoch: samples per epoch // batch_size (the last partial batch is dropped)."""
    n = len(pair_set) if sampling == "every_image" else pair_set.n_reports
    return n // batch_size


def epoch_batches(
    report_group: np.ndarray, batch_size: int, sampling: str, seed: int, epoch: int
) -> np.ndarray:
    """Pair rows of every global batch of ``epoch``: int64 (n_batches, batch_size).

    ``every_image``: every pair once, shuffled. ``one_view_per_report``: one pair drawn uniformly per
    report, shuffled. The last partial batch is dropped (as open_clip does). Deterministic in
    ``(seed, epoch)``, independent of any global RNG state.
    """
    report_group = np.asarray(report_group)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)])
    if sampling == "every_image":
        pool = np.arange(len(report_group), dtype=np.int64)
    elif sampling == "one_view_per_report":
        shuffled = rng.permutation(len(report_group))
        _, first = np.unique(report_group[shuffled], return_index=True)
        pool = np.sort(shuffled[first]).astype(np.int64)
    else:
        raise CxrclipError(f"unknown train.sampling {sampling!r}")
    order = rng.permutation(pool)
    n_batches = len(order) // batch_size
    return order[: n_batches * batch_size].reshape(n_batches, batch_size)


def rank_slice(batch_size: int, rank: int, world_size: int) -> slice:
    """The part of a global batch that ``rank`` computes (``batch_size`` divisible by ``world_size``)."""
    if batch_size % world_size:
        raise CxrclipError(
            f"train.batch_size={batch_size} is not divisible by the {world_size} processes; "
            "it is the global batch, split evenly across ranks"
        )
    local = batch_size // world_size
    return slice(rank * local, (rank + 1) * local)


class _EpochBatches(Dataset):
    """Item ``i`` = (uint8 images (b, S, S), int64 tokens (b, ctx), int64 text groups (b,)) of batch ``i``."""

    def __init__(self, pair_set: PairSet, batches: np.ndarray) -> None:
        self.pair_set = pair_set
        self.batches = torch.from_numpy(np.ascontiguousarray(batches, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = self.batches[i]
        ps = self.pair_set
        return (
            ps.images.index_select(0, rows),
            ps.tokens.index_select(0, ps.token_row.index_select(0, rows)),
            ps.text_group.index_select(0, rows),
        )


def batch_loader(pair_set: PairSet, batches: np.ndarray, workers: int, pin_memory: bool) -> DataLoader:
    """Iterate the given (local) batches in order; ``workers`` processes gather them (0: in-process)."""
    return DataLoader(
        _EpochBatches(pair_set, batches),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None,
    )


def augment_params(n: int, seed: int) -> torch.Tensor:
    """Per-sample augmentation draws, float32 (n, 6) in [0, 1), from a CPU generator seeded by ``seed``."""
    gen = torch.Generator().manual_seed(int(seed) & 0x7FFFFFFFFFFFFFFF)
    return torch.rand((n, 6), generator=gen)


def augment_images(pixels: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Light augmentation of float gray images (B, H, W) in [0, 255], on their device.

    Per sample (from ``draws`` (B, 6) in [0, 1)): zoom 0.9–1.1, rotation ±5°, shift ±4 % of the side,
    contrast ×0.9–1.1 and brightness ±10 % of full scale; border pixels repeat; output clamped to
    [0, 255].
    """
    d = draws.to(device=pixels.device, dtype=torch.float32)
    scale = 0.9 + 0.2 * d[:, 0]
    angle = (d[:, 1] * 2 - 1) * (5 * math.pi / 180)
    shift = (d[:, 2:4] * 2 - 1) * 0.08  # normalised coordinates span 2, so ±0.08 is ±4 % of the side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    x = pixels.unsqueeze(1).float()
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = (0.9 + 0.2 * d[:, 4]).view(-1, 1, 1, 1)
    brightness = ((d[:, 5] * 2 - 1) * 25.5).view(-1, 1, 1, 1)
    mean = x.mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + brightness
    return x.clamp_(0, 255).squeeze(1)
