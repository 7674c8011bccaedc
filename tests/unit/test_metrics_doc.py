"""docs/metrics.md names every series the code defines (a new metric must be documented)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [*ROOT.glob("api_gateway/*.py"), *ROOT.glob("workers/*.py"), *ROOT.glob("jobs/*.py")]
COUNTERS = {
    "seekq_http_errors",
    "seekq_jobs",
    "seekq_generate_tokens",
    "seekq_generate_requests",
    "seekq_moe_expert_tokens",
    "seekq_finetune_steps",
    "seekq_finetune_jobs",
}


def defined() -> set[str]:
    names: set[str] = set()
    for path in SOURCES:
        text = path.read_text()
        names.update(re.findall(r'"(seekq_[a-z_]+)"', text))
        names.update(f"seekq_gpu_memory_{n}" for n in re.findall(r'_family\(\s*"([a-z_]+)"', text))
    return names


def test_every_series_is_documented() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    names = defined()
    assert len(names) >= 20, sorted(names)
    missing = [n for n in sorted(names) if f"`{n}_total`" not in doc and f"`{n}`" not in doc]
    assert missing == []
    for counter in COUNTERS:  # prometheus_client exposes counters with a _total suffix
        assert counter in names and f"`{counter}_total`" in doc
