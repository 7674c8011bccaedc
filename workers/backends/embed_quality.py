"""How close a faster embedding backend stays to the reference, on real English text.

The texts: sentences of the docstrings of a fixed list of Python standard-library modules,
shuffled with a fixed seed. Real prose on many topics (synthetic sentences drawn from a
small vocabulary are all near one another, and their neighbour lists flip on any noise),
and on every machine with the same Python the same texts, with no file to ship.

The bar a variant must clear to be offered (issue 9): mean cosine to the reference
vectors >= 0.99 and, for the first `QUERIES` texts as queries, their 10 nearest
neighbours among all texts overlap the reference's by >= 0.95 on average.
"""

import importlib
import inspect
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

SEED = 20261130
QUERIES = 300
NEIGHBOURS = 10
MIN_MEAN_COSINE = 0.99
MIN_TOP10_OVERLAP = 0.95
# Modules with long, varied docstrings and no import side effects.
MODULES = (
    "argparse",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "cmd",
    "codecs",
    "collections",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email.message",
    "enum",
    "fractions",
    "ftplib",
    "functools",
    "gettext",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html.parser",
    "http.client",
    "http.cookiejar",
    "http.server",
    "imaplib",
    "inspect",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "logging.handlers",
    "mailbox",
    "mimetypes",
    "multiprocessing.pool",
    "netrc",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pdb",
    "pickle",
    "pickletools",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "pprint",
    "pydoc",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "smtplib",
    "socket",
    "socketserver",
    "sqlite3",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "trace",
    "traceback",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "zipfile",
    "zoneinfo",
)
SENTENCE = re.compile(r"^[A-Z][^<>={}\[\]|`]{28,298}\.$")


@dataclass(frozen=True)
class Quality:
    mean_cosine: float
    min_cosine: float
    top10_overlap: float
    texts: int

    @property
    def passes(self) -> bool:
        return self.mean_cosine >= MIN_MEAN_COSINE and self.top10_overlap >= MIN_TOP10_OVERLAP

    def describe(self) -> str:
        return (
            f"mean cosine {self.mean_cosine:.4f} (bar {MIN_MEAN_COSINE}), min "
            f"{self.min_cosine:.4f}, top-{NEIGHBOURS} neighbour overlap "
            f"{self.top10_overlap:.3f} (bar {MIN_TOP10_OVERLAP}) over {self.texts} texts"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passes": self.passes}


def eval_texts(count: int = 2000, seed: int = SEED) -> list[str]:
    """`count` distinct docstring sentences, in a seeded order."""
    found: set[str] = set()
    for name in MODULES:
        module = importlib.import_module(name)
        for _, member in inspect.getmembers(module):
            if inspect.isclass(member) or inspect.isfunction(member):
                found.update(_sentences(inspect.getdoc(member) or ""))
    texts = sorted(found)
    random.Random(seed).shuffle(texts)  # noqa: S311 (a reproducible order, not a secret)
    return texts[:count]


def _sentences(doc: str) -> list[str]:
    flat = " ".join(doc.split())
    return [s for s in re.split(r"(?<=[.!?])\s+", flat) if SENTENCE.match(s)]


def compare(reference: "np.ndarray[Any, Any]", candidate: "np.ndarray[Any, Any]") -> Quality:
    """Cosines of matching rows and top-10 neighbour overlap of the first QUERIES rows."""
    ref, cand = _unit(reference), _unit(candidate)
    cosines = (ref * cand).sum(axis=1)
    queries = min(QUERIES, len(ref) - 1)
    overlap = [
        len(set(a) & set(b)) / NEIGHBOURS
        for a, b in zip(_neighbours(ref, queries), _neighbours(cand, queries), strict=True)
    ]
    return Quality(
        mean_cosine=float(cosines.mean()),
        min_cosine=float(cosines.min()),
        top10_overlap=float(np.mean(overlap)),
        texts=len(ref),
    )


def _unit(vectors: "np.ndarray[Any, Any]") -> "np.ndarray[Any, Any]":
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    result: np.ndarray[Any, Any] = vectors / np.maximum(norms, 1e-12)
    return result


def _neighbours(vectors: "np.ndarray[Any, Any]", queries: int) -> Sequence[Sequence[int]]:
    scores = vectors[:queries] @ vectors.T
    scores[np.arange(queries), np.arange(queries)] = -np.inf  # not its own neighbour
    result: Sequence[Sequence[int]] = np.argsort(-scores, axis=1)[:, :NEIGHBOURS].tolist()
    return result
