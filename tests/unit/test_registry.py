"""The model registry: the models file, the remote-code allow-list, safetensors only."""

import json
from pathlib import Path

import pytest

from jobs.errors import ConfigError, ModelNotFoundError
from jobs.registry import ModelFileEntry, ModelKind, ModelRegistry, register
from workers.backends.hf import require_safetensors


def write(path: Path, entries: list[dict[str, object]]) -> Path:
    path.write_text(json.dumps(entries))
    return path


def test_models_file_adds_entries_with_paths_relative_to_it(tmp_path: Path) -> None:
    models = write(tmp_path / "models.json", [{"name": "tiny", "kind": "causal-lm", "path": "m"}])
    registry = ModelRegistry.load(models, frozenset())
    entry = registry.get("tiny", ModelKind.CAUSAL_LM)
    assert entry.source == str(tmp_path / "m") and not entry.trust_remote_code
    assert registry.get("all-MiniLM-L6-v2").kind is ModelKind.EMBEDDING
    with pytest.raises(ModelNotFoundError, match="no embedding model named 'tiny'"):
        registry.get("tiny", ModelKind.EMBEDDING)


def test_missing_models_file_is_just_the_built_ins(tmp_path: Path) -> None:
    registry = ModelRegistry.load(tmp_path / "absent.json", frozenset())
    assert [e.name for e in registry.all()] == ["all-MiniLM-L6-v2"]


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        '{"name": "x"}',
        '[{"name": "x", "kind": "nope", "path": "/m"}]',
        '[{"name": "../etc", "kind": "causal-lm", "path": "/m"}]',
        '[{"name": "x", "kind": "causal-lm", "path": "/m", "surprise": 1}]',
        '[{"name": "x", "kind": "causal-lm", "path": "/m", "trust_remote_code": "yes"}]',
    ],
)
def test_bad_models_files_are_refused_clearly(tmp_path: Path, content: str) -> None:
    models = tmp_path / "models.json"
    models.write_text(content)
    with pytest.raises(ConfigError, match="not a valid models file"):
        ModelRegistry.load(models, frozenset())


def test_remote_code_only_for_allow_listed_models(tmp_path: Path) -> None:
    entry = {"name": "remote", "kind": "causal-lm", "path": "/m", "trust_remote_code": True}
    models = write(tmp_path / "models.json", [entry])
    with pytest.raises(ConfigError, match="not in SEEKQ_TRUST_REMOTE_CODE"):
        ModelRegistry.load(models, frozenset())
    allowed = ModelRegistry.load(models, frozenset({"remote"}))
    assert allowed.get("remote").trust_remote_code


def test_backends_are_checked_per_kind(tmp_path: Path) -> None:
    onnx = {"name": "e", "kind": "embedding", "path": "/m", "backend": "onnx-int8"}
    assert (
        ModelRegistry.load(write(tmp_path / "a.json", [onnx]), frozenset()).get("e").backend
        == "onnx-int8"
    )
    for entry, known in [
        ({"name": "g", "kind": "causal-lm", "path": "/m", "backend": "tensorrt"}, "has hf$"),
        ({"name": "e", "kind": "embedding", "path": "/m", "backend": "trt"}, "auto, hf, onnx"),
    ]:
        with pytest.raises(
            ConfigError, match=f"model '{entry['name']}' asks for backend .*{known}"
        ):
            ModelRegistry.load(write(tmp_path / "b.json", [entry]), frozenset())


def test_register_adds_and_replaces(tmp_path: Path) -> None:
    models = tmp_path / "models.json"
    register(models, ModelFileEntry(name="a", kind=ModelKind.CAUSAL_LM, path="/one"))
    register(models, ModelFileEntry(name="b", kind=ModelKind.EMBEDDING, path="/two"))
    register(models, ModelFileEntry(name="a", kind=ModelKind.CAUSAL_LM, path="/three"))
    registry = ModelRegistry.load(models, frozenset())
    assert registry.get("a").source == "/three" and registry.get("b").source == "/two"


def test_pickle_weights_are_refused(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04 not loaded")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"no \.safetensors weights \(found pytorch_model\.bin\)"):
        require_safetensors(tmp_path)
