"""The local artifact store: key safety (symlink escapes included), atomic puts, limits."""

import hashlib
import os
import time
from pathlib import Path

import pytest

from storage.artifacts import (
    ArtifactDigestError,
    ArtifactNotFoundError,
    ArtifactTooLargeError,
    InvalidArtifactKeyError,
    LocalArtifactStore,
    get_verified,
    validate_key,
)
from storage.settings import StorageSettings


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts", max_put_bytes=1024)


def test_put_get_open_exists_delete_list(store: LocalArtifactStore) -> None:
    info = store.put("indexes/acme/handbook/v1.faiss", b"one")
    assert (info.key, info.size, info.sha256) == (
        "indexes/acme/handbook/v1.faiss",
        3,
        hashlib.sha256(b"one").hexdigest(),
    )
    store.put("indexes/acme/handbook/CURRENT", b"pointer")
    store.put("indexes/acme/other/v1.faiss", b"x")
    store.put("files/acme/f_1", b"file")
    assert store.get("indexes/acme/handbook/v1.faiss") == b"one"
    with store.open("files/acme/f_1") as handle:
        assert handle.read(2) == b"fi"
    assert store.exists("files/acme/f_1") and not store.exists("files/acme/f_2")
    assert store.list("indexes/acme/handbook/") == [
        "indexes/acme/handbook/CURRENT",
        "indexes/acme/handbook/v1.faiss",
    ]
    assert store.list("indexes/acme/h") == store.list("indexes/acme/handbook/")
    assert len(store.list()) == 4 and store.list("nothing/here/") == []
    assert store.delete("files/acme/f_1") is True
    assert store.delete("files/acme/f_1") is False
    with pytest.raises(ArtifactNotFoundError):
        store.get("files/acme/f_1")
    with pytest.raises(FileNotFoundError):  # the store's error is also the builtin one
        store.open("indexes")  # a directory is not an artifact


def test_the_root_is_the_data_dirs_artifacts_folder(tmp_path: Path) -> None:
    store = LocalArtifactStore.from_settings(StorageSettings(data_dir=tmp_path))
    store.put("a/b", b"x")
    assert (tmp_path / "artifacts" / "a" / "b").read_bytes() == b"x"


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../outside",
        "a/../../outside",
        "a/./b",
        "a//b",
        "a/b/",
        "a\\b",
        "..\\outside",
        "a\x00b",
        ".hidden",
        "a/.tmp-123-x",
        "a b",
        "a/b:c",
        "é",
        "x" * 129,
        "/".join(["abcdefgh"] * 60),  # 539 characters
    ],
)
def test_unsafe_keys_are_refused(store: LocalArtifactStore, key: str) -> None:
    with pytest.raises(InvalidArtifactKeyError):
        validate_key(key)
    for call in (lambda: store.put(key, b"x"), lambda: store.get(key), lambda: store.exists(key)):
        with pytest.raises(ValueError):  # InvalidArtifactKeyError is a ValueError
            call()


def test_keys_at_the_limits_are_accepted(store: LocalArtifactStore) -> None:
    key = "/".join(["a" * 127] * 4)  # 511 characters, segments of 127
    store.put(key, b"x")
    assert store.get(key) == b"x"
    assert validate_key("v1.faiss") == "v1.faiss" and validate_key("t=1/k@2_x-y") == "t=1/k@2_x-y"


def test_a_symlink_inside_the_root_cannot_lead_out(
    store: LocalArtifactStore, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    store.root.mkdir(parents=True)
    (store.root / "escape").symlink_to(outside, target_is_directory=True)
    (store.root / "link").symlink_to(outside / "secret")
    for key in ("escape/secret", "escape/new", "link"):
        with pytest.raises(InvalidArtifactKeyError, match="outside"):
            store.get(key)
    with pytest.raises(InvalidArtifactKeyError):
        store.put("escape/new", b"x")
    with pytest.raises(InvalidArtifactKeyError):
        store.delete("link")
    assert not (outside / "new").exists() and (outside / "secret").read_bytes() == b"secret"
    assert store.list() == []  # symlinks are never listed


def test_a_symlink_pointing_inside_is_not_an_artifact(store: LocalArtifactStore) -> None:
    store.put("real", b"x")
    (store.root / "alias").symlink_to(store.root / "real")
    with pytest.raises(InvalidArtifactKeyError, match="symlink"):
        store.get("alias")
    assert not store.exists("alias") and store.list() == ["real"]


def test_a_root_behind_a_symlink_works(tmp_path: Path) -> None:
    (tmp_path / "disk").mkdir()
    (tmp_path / "data").symlink_to(tmp_path / "disk", target_is_directory=True)
    store = LocalArtifactStore(tmp_path / "data")
    store.put("a/b", b"x")
    assert (tmp_path / "disk" / "a" / "b").read_bytes() == b"x"


def test_size_limit(store: LocalArtifactStore) -> None:
    store.put("fits", b"x" * 1024)
    with pytest.raises(ArtifactTooLargeError):
        store.put("too-big", b"x" * 1025)
    assert not store.exists("too-big")


def test_put_replaces_atomically_and_leaves_no_temporary_file(
    store: LocalArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("blob", b"old")
    with store.open("blob") as reader:  # a reader opened before the replace
        store.put("blob", b"new")
        assert reader.read() == b"old"
    assert store.get("blob") == b"new"
    assert sorted(p.name for p in store.root.iterdir()) == ["blob"]

    def crash(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.put("blob", b"newer")
    assert store.get("blob") == b"new"
    assert sorted(p.name for p in store.root.iterdir()) == ["blob"]


def test_stale_temporary_files_are_removed(store: LocalArtifactStore) -> None:
    store.put("a/blob", b"x")
    stale, fresh = store.root / "a" / ".tmp-1-blob", store.root / "a" / ".tmp-2-blob"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert store.list() == ["a/blob"]  # never listed
    assert store.remove_temporary(older_than_s=3600) == 1
    assert not stale.exists() and fresh.exists()


def test_get_verified_refuses_bytes_that_are_not_the_ones_written(
    store: LocalArtifactStore,
) -> None:
    info = store.put("indexes/acme/handbook/v1.faiss", b"vectors")
    assert get_verified(store, info.key, info.sha256, info.size) == b"vectors"
    path = store.root / info.key
    damaged = bytearray(path.read_bytes())
    damaged[0] ^= 0x01  # one flipped bit, same size
    path.write_bytes(bytes(damaged))
    with pytest.raises(ArtifactDigestError) as raised:
        get_verified(store, info.key, info.sha256, info.size)
    assert raised.value.key == info.key and "vectors" not in str(raised.value)
    path.write_bytes(b"vectors" + b"!")  # longer: refused on its size
    with pytest.raises(ArtifactDigestError):
        get_verified(store, info.key, info.sha256, info.size)


def test_a_changed_adapter_file_is_never_copied_out(
    store: LocalArtifactStore, tmp_path: Path
) -> None:
    from types import SimpleNamespace

    from jobs.adapters import AdapterService
    from jobs.errors import ArtifactCorruptError

    info = store.put("adapters/acme/a_1/adapter_model.safetensors", b"weights")
    files = {"adapter_model.safetensors": {"size": info.size, "sha256": info.sha256}}
    row = SimpleNamespace(id="a_1", files=files, artifact_prefix="adapters/acme/a_1")
    (store.root / info.key).write_bytes(b"Weights")
    service = AdapterService(None, store)  # type: ignore[arg-type]
    with pytest.raises(ArtifactCorruptError, match="adapter file") as raised:
        service.local_copy(row, tmp_path / "cache")  # type: ignore[arg-type]
    assert raised.value.key == info.key
    assert not (tmp_path / "cache" / "a_1").exists()
