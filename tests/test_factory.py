"""The open_clip model factory builds offline, fails with actionable errors, and feeds grayscale correctly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxrclip.errors import CxrclipError
from cxrclip.models.factory import TINY_MODEL, create_clip, load_finetuned, normalize_images

torch.set_num_threads(1)

WAYS_OUT = ("local path", "model.pretrained: none")


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the Hugging Face hub fail fast instead of touching the network."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_tiny_model_builds_offline_and_records_preprocessing(offline_hub: None):
    bundle = create_clip(TINY_MODEL, "none", "cpu")
    assert bundle.image_size == 224 and bundle.context_length == 77
    assert bundle.info["mean"] == list(bundle.mean) and bundle.info["std"] == list(bundle.std)
    assert bundle.info["tokenizer"] == "SimpleTokenizer"
    assert bundle.info["n_parameters"] == sum(p.numel() for p in bundle.model.parameters())
    tokens = bundle.tokenizer(["no acute cardiopulmonary abnormality"])
    assert tuple(tokens.shape) == (1, 77)


def test_unknown_model_name_raises_cxrclip_error():
    with pytest.raises(CxrclipError, match="unknown model.name 'ViT-Nope-99'"):
        create_clip("ViT-Nope-99", "none")


@pytest.mark.parametrize(
    "pretrained",
    ["hf-hub:cxrclip-tests/no-such-model", "no_such_tag"],
    ids=["hub_repo", "unknown_tag"],
)
def test_unreachable_weights_error_names_weights_and_both_ways_out(offline_hub: None, pretrained: str):
    with pytest.raises(CxrclipError) as err:
        create_clip(TINY_MODEL, pretrained)
    message = str(err.value)
    assert f"'{pretrained}'" in message
    assert all(way in message for way in WAYS_OUT)


def test_missing_local_checkpoint_error_names_path_and_both_ways_out(tmp_path: Path):
    path = tmp_path / "nowhere" / "clip.safetensors"
    with pytest.raises(CxrclipError) as err:
        create_clip(TINY_MODEL, str(path))
    assert str(path) in str(err.value) and all(way in str(err.value) for way in WAYS_OUT)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_corrupt_local_checkpoint_raises_cxrclip_error_not_a_traceback(tmp_path: Path, suffix: str):
    path = tmp_path / f"clip{suffix}"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CxrclipError, match="could not load weights"):
        create_clip(TINY_MODEL, str(path))


def test_normalize_images_replicates_gray_and_applies_recorded_mean_std():
    bundle = create_clip(TINY_MODEL, "none")
    pixels = torch.tensor([[[0, 51], [128, 255]]], dtype=torch.uint8)  # (1, 2, 2)
    out = normalize_images(pixels, bundle.info["mean"], bundle.info["std"])
    assert tuple(out.shape) == (1, 3, 2, 2) and out.dtype == torch.float32
    gray = pixels.double() / 255.0
    for channel, (mean, std) in enumerate(zip(bundle.mean, bundle.std, strict=True)):
        expected = ((gray[0] - mean) / std).float()
        torch.testing.assert_close(out[0, channel], expected, atol=1e-5, rtol=0)
    assert not torch.equal(out[0, 0], out[0, 2])  # per-channel statistics, not one gray plane


def test_normalize_images_resizes_only_when_cache_side_differs():
    pixels = torch.full((2, 64, 64), 200, dtype=torch.uint8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    resized = normalize_images(pixels, mean, std, image_size=32)
    kept = normalize_images(pixels, mean, std, image_size=64)
    assert tuple(resized.shape) == (2, 3, 32, 32) and tuple(kept.shape) == (2, 3, 64, 64)
    torch.testing.assert_close(resized, torch.full_like(resized, (200 / 255 - 0.5) / 0.25))


def test_load_finetuned_rejects_missing_corrupt_and_mismatched_weights(tmp_path: Path):
    from safetensors.torch import save_file

    bundle = create_clip(TINY_MODEL, "none")
    with pytest.raises(CxrclipError, match="not found"):
        load_finetuned(bundle, tmp_path / "absent.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 5)
    with pytest.raises(CxrclipError, match="cannot read fine-tuned weights"):
        load_finetuned(bundle, corrupt)
    other = tmp_path / "other.safetensors"
    save_file({"not_a_clip_weight": torch.zeros(3)}, str(other))
    with pytest.raises(CxrclipError, match="does not match model"):
        load_finetuned(bundle, other)
    reshaped = tmp_path / "reshaped.safetensors"
    save_file({"logit_scale": torch.zeros(4)}, str(reshaped))
    with pytest.raises(CxrclipError, match="does not match model"):
        load_finetuned(bundle, reshaped)


def test_tiny_model_embeds_to_its_declared_dimension():
    from cxrclip.evaluation.embed import embed_dim

    bundle = create_clip(TINY_MODEL, "none")
    with torch.inference_mode():
        image = bundle.model.encode_image(normalize_images(torch.zeros(1, 224, 224, dtype=torch.uint8), bundle.mean, bundle.std))
    assert image.shape[-1] == embed_dim(bundle.model) == 64
    assert np.isfinite(image.numpy()).all()


def test_normalize_images_into_a_reused_buffer_equals_a_fresh_result():
    pixels = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    buffer = torch.full((5, 3, 16, 16), float("nan"))
    written = normalize_images(pixels, mean, std, out=buffer[:3])
    torch.testing.assert_close(written, normalize_images(pixels, mean, std), atol=0, rtol=0)
    assert written.data_ptr() == buffer.data_ptr() and torch.isnan(buffer[3:]).all()
