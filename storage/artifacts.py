"""Artifacts: named blobs (uploaded files, index versions) kept outside SQL.

`ArtifactStore` is the interface a backend implements (a local directory here; an
S3-compatible bucket later): `put`, `get`, `open`, `exists`, `delete`, `list`. Keys are
relative POSIX paths such as `indexes/acme/handbook/v3.faiss`, built by seekq's own code
from validated names and ids — never taken from a request — and validated again here:

- 1 to 512 characters; segments separated by `/`, each 1 to 128 characters of
  `A-Z a-z 0-9 _ . = @ -`, never starting with `.` (so no `.`, `..`, hidden files, or
  clashes with the store's own temporary files);
- no absolute paths, backslashes, NUL, empty segments (`a//b`, a trailing `/`);
- locally, the resolved path must stay inside the root (a symlink planted inside the
  root cannot lead out of it).

A `put` is atomic: the bytes go to a temporary file in the key's directory, are fsynced,
then `os.replace`d onto the key (and the directory fsynced), so a reader sees the old
blob or the new one, never a mix, and a crash leaves at most a temporary file behind.

Errors (storage imports nothing of seekq's error tree, which lives in `jobs`; callers
map these):

    ArtifactError
    ├── InvalidArtifactKeyError  (also a ValueError)    the key breaks the rules above
    ├── ArtifactTooLargeError    (also a ValueError)    a put over the store's size limit
    ├── ArtifactDigestError      (also a ValueError)    the bytes are not what was written
    └── ArtifactNotFoundError    (also a FileNotFoundError)  no artifact under the key
"""

import contextlib
import errno
import hashlib
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from storage.settings import StorageSettings

MAX_KEY_CHARS = 512
MAX_SEGMENT_CHARS = 128
DEFAULT_MAX_PUT_BYTES = 1 << 30  # 1 GiB: a 384-dim float32 index of ~650k vectors
TEMP_PREFIX = ".tmp-"  # keys cannot start a segment with "." so they never meet these
_SEGMENT = re.compile(r"[A-Za-z0-9_=@-][A-Za-z0-9_.=@-]*")


class ArtifactError(Exception):
    """Base class of the artifact store's errors."""


class InvalidArtifactKeyError(ArtifactError, ValueError):
    """The key is not a safe relative POSIX path inside the store."""


class ArtifactTooLargeError(ArtifactError, ValueError):
    """The blob is larger than the store accepts in one put."""


class ArtifactNotFoundError(ArtifactError, FileNotFoundError):
    """No artifact is stored under the key."""


class ArtifactStoreFullError(ArtifactError, OSError):
    """The store's file system has no space (or quota) left; nothing was written."""


class ArtifactDigestError(ArtifactError, ValueError):
    """The stored bytes do not match the size and sha256 recorded when they were written."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"artifact {key!r} does not match the sha256 recorded when written")


@dataclass(frozen=True)
class ArtifactInfo:
    key: str
    size: int  # bytes
    sha256: str  # hex digest of the stored bytes


class ArtifactStore(Protocol):
    """Named blobs. Keys follow the rules in this module's docstring."""

    def put(self, key: str, data: bytes) -> ArtifactInfo:
        """Store `data` under `key` atomically, replacing any blob there."""
        ...

    def get(self, key: str) -> bytes: ...

    def open(self, key: str) -> BinaryIO:
        """A binary file object for streaming a large artifact; the caller closes it."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> bool:
        """Remove the blob; False if there was none (deleting twice is not an error)."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with `prefix` (a plain string prefix, as S3 lists), sorted."""
        ...


def get_verified(store: ArtifactStore, key: str, sha256: str, size: int | None = None) -> bytes:
    """The artifact's bytes, when they match the `sha256` (and `size`) recorded at `put`;
    ArtifactDigestError otherwise. A file changed on disk, by damage or by hand, is never
    handed on to a loader (FAISS, safetensors), whatever it holds."""
    data = store.get(key)
    if (size is not None and len(data) != size) or hashlib.sha256(data).hexdigest() != sha256:
        raise ArtifactDigestError(key)
    return data


def validate_key(key: str) -> str:
    """`key` when it follows the rules in the module docstring, else InvalidArtifactKeyError."""
    if not isinstance(key, str) or not key:
        raise InvalidArtifactKeyError("artifact key is empty")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidArtifactKeyError(f"artifact key longer than {MAX_KEY_CHARS} characters")
    for bad, what in (("\x00", "NUL"), ("\\", "a backslash")):
        if bad in key:
            raise InvalidArtifactKeyError(f"artifact key contains {what}")
    if key.startswith("/"):
        raise InvalidArtifactKeyError("artifact key is an absolute path")
    for segment in key.split("/"):
        _validate_segment(segment)
    return key


def _validate_segment(segment: str) -> None:
    if not segment:
        raise InvalidArtifactKeyError("artifact key has an empty segment")
    if segment in {".", ".."}:
        raise InvalidArtifactKeyError("artifact key has a '.' or '..' segment")
    if len(segment) > MAX_SEGMENT_CHARS:
        raise InvalidArtifactKeyError(f"artifact key segment over {MAX_SEGMENT_CHARS} chars")
    if not _SEGMENT.fullmatch(segment):
        raise InvalidArtifactKeyError(
            "artifact key segments use A-Z a-z 0-9 _ . = @ - and do not start with '.'"
        )


class LocalArtifactStore:
    """`ArtifactStore` on a local directory (`<data dir>/artifacts` by default)."""

    def __init__(self, root: Path, *, max_put_bytes: int = DEFAULT_MAX_PUT_BYTES) -> None:
        # Resolved once: the root itself may be a symlink (a data dir on another disk).
        self.root = Path(root).resolve()
        self.max_put_bytes = max_put_bytes

    @classmethod
    def from_settings(
        cls, settings: StorageSettings, *, max_put_bytes: int = DEFAULT_MAX_PUT_BYTES
    ) -> "LocalArtifactStore":
        return cls(settings.data_dir / "artifacts", max_put_bytes=max_put_bytes)

    def put(self, key: str, data: bytes) -> ArtifactInfo:
        if len(data) > self.max_put_bytes:
            raise ArtifactTooLargeError(
                f"artifact of {len(data)} bytes is over the limit of {self.max_put_bytes}"
            )
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(target, data)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ArtifactStoreFullError(
                    errno.ENOSPC, f"the artifact store has no space left for {key}"
                ) from None
            raise
        return ArtifactInfo(key, len(data), hashlib.sha256(data).hexdigest())

    def get(self, key: str) -> bytes:
        with self.open(key) as handle:
            return handle.read()

    def open(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            # O_NOFOLLOW: the store never makes symlinks, so one found here is refused.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except (FileNotFoundError, NotADirectoryError):
            raise ArtifactNotFoundError(f"no artifact {key!r}") from None
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise InvalidArtifactKeyError(f"artifact {key!r} is a symlink") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ArtifactNotFoundError(f"no artifact {key!r} (a directory)")
        return os.fdopen(fd, "rb")

    def exists(self, key: str) -> bool:
        path = self._path(key)
        return path.is_file() and not path.is_symlink()

    def delete(self, key: str) -> bool:
        try:
            self._path(key).unlink()
        except (FileNotFoundError, IsADirectoryError):
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        # Walk only the directory the prefix names (up to its last "/").
        directory = prefix.rpartition("/")[0]
        base = self._path(directory) if directory else self.root
        if not base.is_dir():
            return []
        keys = (self._key_of(path) for path in base.rglob("*") if self._listable(path))
        return sorted(key for key in keys if key.startswith(prefix))

    def remove_temporary(self, older_than_s: float = 3600.0) -> int:
        """Delete temporary files left by puts that crashed; returns how many."""
        cutoff = time.time() - older_than_s
        removed = 0
        for path in self.root.rglob(f"{TEMP_PREFIX}*") if self.root.is_dir() else []:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _path(self, key: str) -> Path:
        path = self.root / validate_key(key)
        if not path.resolve().is_relative_to(self.root):
            raise InvalidArtifactKeyError("artifact key resolves outside the store")
        return path

    def _listable(self, path: Path) -> bool:
        if path.is_symlink() or not path.is_file():
            return False
        return not any(part.startswith(".") for part in path.relative_to(self.root).parts)

    def _key_of(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def _write_atomically(target: Path, data: bytes) -> None:
    temporary = target.with_name(f"{TEMP_PREFIX}{secrets.token_hex(8)}-{target.name}")
    try:
        with temporary.open("xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); some platforms cannot open directories."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
