"""CLIP embedding of the image cache and texts, CLIP scoring of a split, and the `cxrclip score` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cxrclip.cli import main
from cxrclip.errors import CxrclipError
from cxrclip.evaluation.candidates import load_scores, normalise
from cxrclip.evaluation.embed import embed_images, embed_texts, score_clip
from cxrclip.models.factory import TINY_MODEL, ClipBundle, create_clip

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
N_IMAGES, SIDE = 12, 224


@pytest.fixture(scope="module")
def bundle() -> ClipBundle:
    torch.manual_seed(0)
    return create_clip(TINY_MODEL, "none", "cpu")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """A memory-mapped uint8 (12, 224, 224) cache of distinct random images."""
    pixels = np.random.default_rng(7).integers(0, 256, (N_IMAGES, SIDE, SIDE), dtype=np.uint8)
    path = tmp_path_factory.mktemp("cache") / "images_224.npy"
    np.save(path, pixels)
    return np.load(path, mmap_mode="r")


def _pairs() -> pd.DataFrame:
    """Pairs of three splits, test rows out of pair_id order, two test texts equal after normalisation."""
    texts = ["No acute disease.", "Cardiomegaly.", "no acute  disease", "Left effusion.", "Clear lungs.",
             "Small nodule.", "Train only text.", "Val only text."]
    return pd.DataFrame({
        "pair_id": [5, 1, 3, 0, 4, 2, 6, 7],
        "image_id": [f"CXR{i}_IM" for i in range(8)],
        "report_id": [f"CXR{i}" for i in range(8)],
        "cache_index": [10, 3, 7, 0, 5, 2, 1, 4],
        "view": "frontal",
        "split": ["test"] * 6 + ["train", "val"],
        "is_normal": [True, False, True, False, True, False, True, False],
        "text": texts,
    })


def test_image_embeddings_are_unit_float32_rows_in_index_order(bundle: ClipBundle, cache: np.ndarray):
    indices = np.array([9, 2, 2, 0, 11])
    emb = embed_images(bundle, cache, indices, batch_size=2, device="cpu", progress=False)
    assert emb.shape == (5, 64) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb[1], emb[2])  # same row twice -> same embedding
    assert not np.allclose(emb[0], emb[1])  # different images -> different embeddings
    reordered = embed_images(bundle, cache, indices[::-1].copy(), batch_size=2, device="cpu", progress=False)
    np.testing.assert_allclose(reordered[::-1], emb, atol=1e-6)


def test_image_embeddings_are_identical_across_runs_and_independent_of_batch_size(
    bundle: ClipBundle, cache: np.ndarray
):
    indices = np.arange(N_IMAGES)[::-1].copy()
    first = embed_images(bundle, cache, indices, batch_size=5, device="cpu", progress=False)
    second = embed_images(bundle, cache, indices, batch_size=5, device="cpu", progress=False)
    np.testing.assert_array_equal(first, second)
    for batch_size in (1, 64):
        other = embed_images(bundle, cache, indices, batch_size=batch_size, device="cpu", progress=False)
        np.testing.assert_allclose(other, first, atol=1e-5, rtol=0)


def test_image_embedding_matches_a_plain_open_clip_forward(bundle: ClipBundle, cache: np.ndarray):
    mean = torch.tensor(bundle.mean).view(1, 3, 1, 1)
    std = torch.tensor(bundle.std).view(1, 3, 1, 1)
    rgb = torch.from_numpy(np.array(cache[[4, 8]])).float().div(255).unsqueeze(1).repeat(1, 3, 1, 1)
    with torch.inference_mode():
        expected = bundle.model.eval().encode_image((rgb - mean) / std, normalize=True).numpy()
    ours = embed_images(bundle, cache, np.array([4, 8]), batch_size=2, device="cpu", progress=False)
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)


def test_bad_cache_or_indices_raise_cxrclip_error(bundle: ClipBundle, cache: np.ndarray):
    with pytest.raises(CxrclipError, match="outside the cache's rows"):
        embed_images(bundle, cache, np.array([0, -1]), 4, "cpu", progress=False)
    with pytest.raises(CxrclipError, match="outside the cache's rows"):
        embed_images(bundle, cache, np.array([N_IMAGES]), 4, "cpu", progress=False)
    with pytest.raises(CxrclipError, match="uint8"):
        embed_images(bundle, np.zeros((2, 8, 8), np.float32), np.array([0]), 4, "cpu", progress=False)
    with pytest.raises(CxrclipError, match="batch_size"):
        embed_images(bundle, cache, np.array([0]), 0, "cpu", progress=False)


def test_empty_inputs_give_empty_embeddings(bundle: ClipBundle, cache: np.ndarray):
    assert embed_images(bundle, cache, np.array([], dtype=np.int64), 4, "cpu", progress=False).shape == (0, 64)
    assert embed_texts(bundle, [], 4, "cpu", progress=False).shape == (0, 64)


def test_text_embeddings_are_unit_deterministic_and_independent_of_batch_size(bundle: ClipBundle):
    texts = ["No acute cardiopulmonary abnormality.", "Cardiomegaly with small left effusion.", "", "Clear lungs."]
    first = embed_texts(bundle, texts, batch_size=3, device="cpu", progress=False)
    assert first.shape == (4, 64) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(first, embed_texts(bundle, texts, batch_size=3, device="cpu", progress=False))
    np.testing.assert_allclose(embed_texts(bundle, texts, batch_size=1, device="cpu", progress=False), first, atol=1e-5)
    assert not np.allclose(first[0], first[1])


def test_long_text_is_truncated_to_the_context_length(bundle: ClipBundle):
    long_text = " ".join(["the lungs are clear"] * 40)  # far beyond 77 tokens
    texts = [long_text, long_text + " but there is a large right pneumothorax", long_text[:60]]
    emb = embed_texts(bundle, texts, batch_size=4, device="cpu", progress=False)
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-6)  # the tail past the context is dropped
    assert not np.allclose(emb[0], emb[2])


def test_non_string_texts_raise_cxrclip_error(bundle: ClipBundle):
    with pytest.raises(CxrclipError, match="must be strings"):
        embed_texts(bundle, ["fine", None], 4, "cpu", progress=False)  # type: ignore[list-item]


def test_embedding_restores_model_mode_and_global_determinism(bundle: ClipBundle, cache: np.ndarray):
    import torch.utils.deterministic as deterministic

    bundle.model.train()
    before = (torch.are_deterministic_algorithms_enabled(), deterministic.fill_uninitialized_memory)
    embed_images(bundle, cache, np.array([1]), 4, "cpu", progress=False)
    after = (torch.are_deterministic_algorithms_enabled(), deterministic.fill_uninitialized_memory)
    assert bundle.model.training and after == before
    bundle.model.eval()


def test_real_iu_report_texts_embed_to_finite_unit_vectors(bundle: ClipBundle, kaggle_dir: Path):
    reports = pd.read_csv(kaggle_dir / "indiana_reports.csv").head(64)
    texts = (reports["impression"].fillna("") + " " + reports["findings"].fillna("")).str.strip().tolist()
    n_tokens = [int((row != 0).sum()) for row in bundle.tokenizer(texts)]
    emb = embed_texts(bundle, texts, batch_size=16, device="cpu", progress=False)
    assert np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert max(n_tokens) <= bundle.context_length


def test_finetuned_weights_round_trip_through_safetensors(tmp_path: Path, cache: np.ndarray):
    from safetensors.torch import save_file

    from cxrclip.models.factory import load_finetuned

    torch.manual_seed(1)
    trained = create_clip(TINY_MODEL, "none")
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in trained.model.state_dict().items()}, str(weights))
    torch.manual_seed(2)
    fresh = create_clip(TINY_MODEL, "none")
    indices, texts = np.array([0, 5]), ["clear lungs", "cardiomegaly"]
    expected_img = embed_images(trained, cache, indices, 2, "cpu", progress=False)
    expected_txt = embed_texts(trained, texts, 2, "cpu", progress=False)
    assert not np.allclose(embed_images(fresh, cache, indices, 2, "cpu", progress=False), expected_img)
    loaded = load_finetuned(fresh, weights)
    np.testing.assert_array_equal(embed_images(loaded, cache, indices, 2, "cpu", progress=False), expected_img)
    np.testing.assert_array_equal(embed_texts(loaded, texts, 2, "cpu", progress=False), expected_txt)
    assert loaded.info["weights"] == str(weights)


def test_score_clip_follows_the_scores_contract(bundle: ClipBundle, cache: np.ndarray):
    pairs = _pairs()
    test = pairs[pairs["split"] == "test"]
    scores, emb = score_clip(bundle, test, cache, batch_size=4, device="cpu", progress=False)
    ordered = test.sort_values("pair_id")
    np.testing.assert_array_equal(scores["pair_ids"], ordered["pair_id"].to_numpy())
    assert scores["pair_ids"].dtype == np.int64 and scores["pair_text_idx"].dtype == np.int64
    assert scores["scores"].dtype == np.float32 and scores["scores"].shape == (6, 5)  # 2 texts merge
    texts = scores["candidate_texts"]
    assert texts.dtype.kind == "U" and len(set(texts.tolist())) == len(texts)
    assert [texts[j] for j in scores["pair_text_idx"]] == [normalise(t) for t in ordered["text"]]
    assert emb["image"].shape == (6, 64) and emb["text"].shape == (5, 64)
    np.testing.assert_array_equal(emb["pair_ids"], scores["pair_ids"])
    np.testing.assert_allclose(scores["scores"], emb["image"] @ emb["text"].T, atol=1e-6)
    direct = embed_images(bundle, cache, ordered["cache_index"].to_numpy(), 4, "cpu", progress=False)
    np.testing.assert_allclose(emb["image"], direct, atol=1e-6)  # query i = i-th pair by pair_id
    info = json.loads(str(scores["info"]))
    assert info["model"] == TINY_MODEL and info["tokenizer"] == "SimpleTokenizer" and info["mean"] == list(bundle.mean)


def test_score_clip_on_an_empty_split_raises_cxrclip_error(bundle: ClipBundle, cache: np.ndarray):
    with pytest.raises(CxrclipError, match="empty"):
        score_clip(bundle, _pairs().iloc[0:0], cache, 4, "cpu", progress=False)


# --- the `cxrclip score` CLI -------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, cache: np.ndarray) -> Path:
    """A working directory with params (tiny model, CPU), pairs, reports and the cache."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"] = {"name": TINY_MODEL, "pretrained": "none"}
    params["embed"] = {"batch_size": 4, "device": "cpu"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    pairs = _pairs()
    pairs.to_parquet(tmp_path / "pairs.parquet", index=False)
    reports = pd.DataFrame({"report_id": pairs["report_id"], "indication": "", "text": pairs["text"]})
    reports.to_parquet(tmp_path / "reports.parquet", index=False)
    np.save(tmp_path / "images_224.npy", np.asarray(cache))
    return tmp_path


def _score(project: Path, method: str, *extra: str) -> int:
    return main([
        "score", "--params", str(project / "params.yaml"), "--method", method,
        "--pairs", str(project / "pairs.parquet"), "--reports", str(project / "reports.parquet"),
        "--cache", str(project / "images_224.npy"), "--out", str(project / method / "scores.npz"),
        "--embeddings-out", str(project / method / "embeddings.npz"), "--no-progress", *extra,
    ])


def test_score_cli_zeroshot_writes_contract_scores_and_embeddings(project: Path):
    assert _score(project, "zeroshot") == 0
    scores = load_scores(project / "zeroshot" / "scores.npz")  # validates the contract
    assert scores["scores"].shape == (6, 5) and scores["scores"].dtype == np.float32
    info = json.loads(str(scores["info"]))
    assert info["method"] == "zeroshot" and info["split"] == "test" and info["model"] == TINY_MODEL
    assert {"tokenizer", "mean", "std", "image_size", "context_length"} <= set(info)
    with np.load(project / "zeroshot" / "embeddings.npz", allow_pickle=False) as emb:
        assert {"image", "text", "pair_ids"} <= set(emb.files)
        assert emb["image"].shape == (6, 64) and emb["text"].shape == (5, 64)
        np.testing.assert_allclose(scores["scores"], emb["image"] @ emb["text"].T, atol=1e-6)


def test_score_cli_finetuned_uses_the_given_weights(project: Path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    trained = create_clip(TINY_MODEL, "none")
    weights = project / "model.safetensors"
    save_file(trained.model.state_dict(), str(weights))
    assert _score(project, "finetuned", "--weights", str(weights)) == 0
    scores = load_scores(project / "finetuned" / "scores.npz")
    test = _pairs().query("split == 'test'").sort_values("pair_id")
    cache = np.load(project / "images_224.npy", mmap_mode="r")
    expected, _ = score_clip(trained, test, cache, 4, "cpu", progress=False)
    np.testing.assert_allclose(scores["scores"], expected["scores"], atol=1e-6)
    assert json.loads(str(scores["info"]))["weights"] == str(weights)


def test_score_cli_reports_missing_inputs_without_traceback(project: Path, capsys: pytest.CaptureFixture[str]):
    assert _score(project, "finetuned", "--weights", str(project / "absent.safetensors")) == 2
    assert "absent.safetensors" in capsys.readouterr().err
    (project / "images_224.npy").unlink()
    assert _score(project, "zeroshot") == 2
    assert "image cache not found" in capsys.readouterr().err
    assert not (project / "zeroshot" / "scores.npz").exists()


def test_score_cli_baseline_writes_contract_scores(project: Path):
    pytest.importorskip("cxrclip.evaluation.baselines")
    assert _score(project, "random") == 0
    scores = load_scores(project / "random" / "scores.npz")
    assert scores["scores"].shape == (6, 5)
    assert json.loads(str(scores["info"]))["method"] == "random"
    assert not (project / "random" / "embeddings.npz").exists()
