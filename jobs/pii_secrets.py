"""Secret detection for :mod:`jobs.pii`: API keys with well-known prefixes, JWTs, PEM key
lines and passwords in URLs.

Every pattern starts with a look-behind that pins an attempt to the start of a token,
so a run of token characters is tried once, not once per position: the scan stays
linear on inputs like ``"sk-" * 300_000``. Matches are line-local (no pattern crosses a
line break), as :func:`jobs.documents.mask_document` relies on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# Prefixes published by the issuers (or, for sq_, jobs.keys.KEY_PATTERN).
_PREFIXED = (
    r"sq_[0-9a-f]{16}_[A-Za-z0-9_-]{43}",  # seekq API keys
    r"sk-[A-Za-z0-9_-]{20,}",  # OpenAI sk-/sk-proj-/sk-svcacct-, Anthropic sk-ant-
    r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}",  # Stripe secret and restricted keys
    r"whsec_[A-Za-z0-9+/=]{24,}",  # Stripe webhook signing secrets
    r"gh[pousr]_[A-Za-z0-9]{30,}",  # GitHub tokens
    r"github_pat_[A-Za-z0-9_]{40,}",  # GitHub fine-grained tokens
    r"glpat-[A-Za-z0-9_-]{20,}",  # GitLab personal access tokens
    r"xox[abposr]-[A-Za-z0-9-]{10,}",  # Slack bot/user/app tokens
    r"(?:AKIA|ASIA)[A-Z0-9]{16}",  # AWS access key ids
    r"AIza[A-Za-z0-9_-]{35}",  # Google API keys
    r"hf_[A-Za-z0-9]{30,}",  # Hugging Face tokens
    r"npm_[A-Za-z0-9]{36}",  # npm tokens
    r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",  # JWT: {"...}.{"...}.sig
)
_KEY_CHAR = r"[A-Za-z0-9_\-]"
_SECRET = re.compile(rf"(?<!{_KEY_CHAR})(?:{'|'.join(_PREFIXED)})(?!{_KEY_CHAR})")

# A PEM body line: only base64 on the line. Line-local on purpose, so the BEGIN/END
# markers stay visible and a page cut inside a key still masks every line of it.
_PEM_BODY = re.compile(r"^[ \t]*([A-Za-z0-9+/]{16,}={0,2})[ \t]*$", re.MULTILINE)


# The password in a URL's userinfo ("postgres://app:s3cret@db:5432/x"): only the
# password is masked. The look-behind anchors each attempt at a scheme's "://".
_URL_PASSWORD = re.compile(r"(?<=://)[A-Za-z0-9._~%!$&'*+,;=-]{1,128}:([^@\s/]{1,256})@")


def _mixed(body: str, symbols: str = "") -> bool:
    """Random key material has upper and lower case and digits (or, in base64, one of
    ``symbols``: a short last PEM line may happen to hold no digit); prose does not."""
    return (
        any(c.isdigit() or c in symbols for c in body)
        and any(c.isupper() for c in body)
        and any(c.islower() for c in body)
    )


def find_secrets(probe: str) -> Iterator[tuple[int, int]]:
    """(start, end) of every secret in ``probe``: keys, then URL passwords, then PEM lines."""
    for m in _SECRET.finditer(probe):
        # "sk-" also starts slugs ("sk-learn-tutorial-..."); real keys are random.
        if not m.group().startswith("sk-") or _mixed(m.group()[3:]):
            yield m.span()
    for m in _URL_PASSWORD.finditer(probe):
        yield m.span(1)
    for m in _PEM_BODY.finditer(probe):
        if _mixed(m.group(1), symbols="+/="):
            yield m.span(1)
