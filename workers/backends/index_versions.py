"""Versions of a vector index in the artifact store: `v<N>.faiss` files beside each other
and a `CURRENT` pointer swapped atomically, so a crash mid-write never corrupts the
serving index and a reader's loaded version never changes under it."""

import json
import re
from dataclasses import asdict, dataclass

from jobs.errors import ArtifactCorruptError, PermanentError, SpecError
from storage.artifacts import (
    ArtifactDigestError,
    ArtifactNotFoundError,
    ArtifactStore,
    get_verified,
    validate_key,
)
from workers.backends.vector_index import IndexFormatError, VectorIndex


class IndexVersionNotFoundError(PermanentError):
    """The index has no version yet (no pointer was ever swapped in)."""


@dataclass(frozen=True)
class IndexPointer:
    version: int
    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class LoadedIndex:
    pointer: IndexPointer
    index: VectorIndex


class IndexVersions:
    """The versions of one index under `prefix`: `v<N>.faiss` files and a `CURRENT`
    pointer, `{"current": pointer, "previous": [pointers]}`, replaced atomically.

    `save` writes the next version beside the others, then swaps the pointer; a crash
    before the swap leaves the old version serving (and at most an orphan file, which the
    next save skips over and prunes). The pointer's sha256 is checked on every load, so
    a damaged file is refused rather than served. After a swap, only the `keep` latest
    versions that were once current stay. One writer per prefix (the index job's lease);
    any number of readers.
    """

    POINTER = "CURRENT"
    _VERSION = re.compile(r"v([0-9]+)\.faiss")

    def __init__(self, store: ArtifactStore, prefix: str, *, keep: int = 2) -> None:
        if keep < 1:
            raise SpecError("keep at least one index version")
        self.store, self.prefix, self.keep = store, validate_key(prefix), keep

    def save(self, index: VectorIndex) -> IndexPointer:
        history = self.history()
        version = max([*self.versions(), *(p.version for p in history)], default=0) + 1
        info = self.store.put(f"{self.prefix}/v{version}.faiss", index.to_bytes())
        pointer = IndexPointer(version, info.key, info.size, info.sha256)
        kept = [pointer, *history][: self.keep]
        document = {"current": asdict(kept[0]), "previous": [asdict(p) for p in kept[1:]]}
        self.store.put(self._pointer_key, json.dumps(document).encode())
        self._prune({p.version for p in kept})
        return pointer

    def write(self, index: VectorIndex, *, after: int = 0) -> IndexPointer:
        """Write the next version's file without swapping any pointer: for callers that keep
        the current version elsewhere (seekq keeps it in SQL, with the chunk rows, so one
        transaction swaps both). The number is above `after` and every file present."""
        version = max([*self.versions(), after], default=0) + 1
        info = self.store.put(f"{self.prefix}/v{version}.faiss", index.to_bytes())
        return IndexPointer(version, info.key, info.size, info.sha256)

    def prune(self, kept: set[int]) -> None:
        """Delete every version file but `kept` (orphans of crashed writes included)."""
        self._prune(kept)

    def history(self) -> list[IndexPointer]:
        """The current version's pointer first, then the kept previous ones."""
        try:
            document = json.loads(self.store.get(self._pointer_key))
            return [IndexPointer(**p) for p in [document["current"], *document["previous"]]]
        except ArtifactNotFoundError:
            return []
        except (ValueError, KeyError, TypeError):
            raise IndexFormatError(f"unreadable version pointer under {self.prefix}") from None

    def find_current(self) -> IndexPointer | None:
        history = self.history()
        return history[0] if history else None

    def load_current(self) -> LoadedIndex:
        # A writer may prune the pointed-to file between our two reads (after two more
        # saves): read the pointer again then.
        for _attempt in range(3):
            pointer = self.find_current()
            if pointer is None:
                raise IndexVersionNotFoundError(f"no index version under {self.prefix}")
            try:
                return LoadedIndex(pointer, self.load(pointer))
            except ArtifactNotFoundError:
                continue
        raise IndexVersionNotFoundError(f"index versions under {self.prefix} keep vanishing")

    def load(self, pointer: IndexPointer) -> VectorIndex:
        """The version `pointer` names; ArtifactCorruptError if its file is not the one
        written (FAISS never reads a changed file: its parser is not built for hostile
        bytes)."""
        try:
            data = get_verified(self.store, pointer.key, pointer.sha256, pointer.size)
        except ArtifactDigestError:
            raise ArtifactCorruptError(pointer.key, "index file") from None
        return VectorIndex.from_bytes(data)

    def versions(self) -> list[int]:
        """Version numbers with a file, orphans of crashed writes included."""
        found = []
        for key in self.store.list(f"{self.prefix}/v"):
            match = self._VERSION.fullmatch(key.rpartition("/")[2])
            if match and key.rpartition("/")[0] == self.prefix:
                found.append(int(match.group(1)))
        return sorted(found)

    @property
    def _pointer_key(self) -> str:
        return f"{self.prefix}/{self.POINTER}"

    def _prune(self, kept: set[int]) -> None:
        for version in self.versions():
            if version not in kept:
                self.store.delete(f"{self.prefix}/v{version}.faiss")
