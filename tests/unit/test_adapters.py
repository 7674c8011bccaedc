"""LoRA adapters served by the batching engine on the tiny DeepSeek-V3 MoE: rows with
different adapters and the base model share one forward pass and each gets the greedy text
it gets alone (from plain peft + HF generate); adapters load on demand into a bounded LRU;
an adapter that cannot be served fails its own request only.

The adapters are random, untrained LoRA weights (`init_lora_weights=False`): enough to
change the greedy text, which is what makes the comparisons able to fail."""

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer

from jobs.errors import SpecError
from workers.adapters import AdapterLoadError, AdapterRef
from workers.backends.causal_lm import load_causal_lm
from workers.engine import Generation, GenerationEngine, Request
from workers.models.tiny import make_tiny_deepseek
from workers.sampling import SamplingParams

ATTENTION = ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
PROMPTS = ["the queue keeps", "a small model turns each sentence into numbers", "hello"]
NEW_TOKENS = 12
LONG = 40  # a base request that is still running when another one joins it


@dataclass
class Setup:
    base_dir: Path
    adapters: dict[str, AdapterRef]  # "A", "B", "C": attention LoRA with different weights
    expected: dict[tuple[str | None, str, int], str]  # (adapter, prompt, tokens): greedy text
    tokenizer: Any

    def engine(self, **options: Any) -> GenerationEngine:
        model, _ = load_causal_lm(self.base_dir, device="cpu")  # a fresh base: wrapping mutates
        return GenerationEngine("tiny", model, self.tokenizer, **options)  # type: ignore[arg-type]

    def request(self, prompt: str, adapter: str | None, tokens: int = NEW_TOKENS) -> Request:
        ids = list(self.tokenizer(prompt)["input_ids"])
        params = SamplingParams(max_new_tokens=tokens, temperature=0.0)
        ref = self.adapters[adapter] if adapter else None
        return Request(f"job-{adapter or 'base'}", ids, params, adapter=ref)

    def check(
        self,
        future: "Future[Generation]",
        prompt: str,
        adapter: str | None,
        tokens: int = NEW_TOKENS,
    ) -> None:
        generation = future.result(timeout=60)
        assert generation.text == self.expected[(adapter, prompt, tokens)], (adapter, prompt)
        fed = generation.prompt_tokens + generation.completion_tokens - 1
        assert generation.expert_counts is not None
        for counts in generation.expert_counts.values():  # top-2 routing, padding masked
            assert sum(counts) == fed * 2


def make_adapter(base_dir: Path, out: Path, seed: int, **config: Any) -> Path:
    torch.manual_seed(seed)
    model, _ = load_causal_lm(base_dir, device="cpu")
    options = {"r": 8, "lora_alpha": 16, "target_modules": ATTENTION, **config}
    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, **options))  # type: ignore[arg-type]
    peft_model.save_pretrained(out)
    return out


def greedy(model: Any, tokenizer: Any, prompt: str, tokens: int) -> str:
    inputs = tokenizer(prompt, return_tensors="pt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the engine does: 2 threads on 2 busy cores crawl
    try:
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=tokens, do_sample=False)
    finally:
        torch.set_num_threads(threads)
    return str(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("adapters")
    base_dir = make_tiny_deepseek(root / "tiny")
    adapters = {
        # A is saved as a CAUSAL_LM adapter (PeftModelForCausalLM), B and C as plain ones.
        "A": AdapterRef(
            "a_" + "a" * 32, make_adapter(base_dir, root / "A", 1, task_type="CAUSAL_LM")
        ),
        "B": AdapterRef("a_" + "b" * 32, make_adapter(base_dir, root / "B", 2)),
        "C": AdapterRef("a_" + "c" * 32, make_adapter(base_dir, root / "C", 3)),
    }
    expected: dict[tuple[str | None, str, int], str] = {}
    for name in [None, *adapters]:
        model, tokenizer = load_causal_lm(base_dir, device="cpu")
        if name is not None:
            model = PeftModel.from_pretrained(model, adapters[name].path).eval()  # type: ignore[assignment]
        for prompt in PROMPTS:
            expected[(name, prompt, NEW_TOKENS)] = greedy(model, tokenizer, prompt, NEW_TOKENS)
    base, tokenizer = load_causal_lm(base_dir, device="cpu")
    expected[(None, PROMPTS[1], LONG)] = greedy(base, tokenizer, PROMPTS[1], LONG)
    texts = {name: expected[(name, PROMPTS[0], NEW_TOKENS)] for name in [None, "A", "B"]}
    assert len(set(texts.values())) == 3, texts  # else the comparisons below prove nothing
    return Setup(base_dir, adapters, expected, tokenizer)


@contextmanager
def held(engine: GenerationEngine) -> Iterator[None]:
    """Holds the engine thread before its next admission, so that whatever is submitted
    meanwhile is admitted, and prefilled, together."""
    reached, release = threading.Event(), threading.Event()
    admit = engine._admit

    def gated() -> list[Request]:
        reached.set()
        release.wait(30)
        del engine._admit  # type: ignore[method-assign]
        return admit()

    engine._admit = gated  # type: ignore[method-assign]
    assert reached.wait(30)
    try:
        yield
    finally:
        release.set()


def spy_rows(engine: GenerationEngine) -> list[list[str]]:
    """The adapter names of every forward pass's rows, from now on."""
    passes: list[list[str]] = []
    forward: Callable[..., Any] = engine._forward

    def recording(sequences: list[Any], **inputs: Any) -> Any:
        passes.append([s.adapter for s in sequences])
        return forward(sequences, **inputs)

    engine._forward = recording  # type: ignore[method-assign]
    return passes


@pytest.mark.parametrize("continuous", [True, False])
def test_adapters_and_the_base_share_a_batch(setup: Setup, continuous: bool) -> None:
    engine = setup.engine(max_batch=8, continuous=continuous)
    passes = spy_rows(engine)
    jobs = [(p, a) for p in PROMPTS for a in ["A", None, "B"]][:7]
    try:
        with held(engine):
            futures = [engine.submit(setup.request(p, a)) for p, a in jobs]
        for future, (prompt, adapter) in zip(futures, jobs, strict=True):
            setup.check(future, prompt, adapter)
        assert sorted(engine.adapters.resident) == [setup.adapters[n].key for n in "AB"]
        assert engine.model.config.model_type == "deepseek_v3"  # PeftModel passes it through
    finally:
        engine.close()
    assert len(passes[0]) == len(jobs)  # one prefill for all: A, B and base rows together
    assert set(passes[0]) == {"__base__", setup.adapters["A"].key, setup.adapters["B"].key}


def test_an_adapter_request_joins_a_running_base_batch(setup: Setup) -> None:
    first_text = threading.Event()
    engine = setup.engine(max_batch=2, streams=lambda entries: first_text.set())
    passes = spy_rows(engine)
    try:
        running = setup.request(PROMPTS[1], None, LONG)
        running.stream = True
        base = engine.submit(running)
        assert first_text.wait(30)
        assert engine.adapters.wrapped is False  # a plain model so far
        joined = engine.submit(setup.request(PROMPTS[0], "B"))
        setup.check(joined, PROMPTS[0], "B")
        setup.check(base, PROMPTS[1], None, LONG)
    finally:
        engine.close()
    merged = ["__base__", setup.adapters["B"].key]
    assert merged in passes  # a decoding step ran both rows, each with its own adapter


def test_resident_adapters_are_a_bounded_lru(setup: Setup) -> None:
    engine = setup.engine(max_batch=4, max_adapters=2)
    resident = engine.adapters
    keys = {name: ref.key for name, ref in setup.adapters.items()}

    def run(*names: str | None) -> None:
        with held(engine):
            futures = [engine.submit(setup.request(PROMPTS[0], n)) for n in names]
        for future, name in zip(futures, names, strict=True):
            setup.check(future, PROMPTS[0], name)

    try:
        for name in "ABC":
            run(name)
        assert resident.resident == [keys["B"], keys["C"]]
        assert (resident.loads, resident.evictions) == (3, 1)
        run("A")  # reloaded on demand
        assert resident.resident == [keys["C"], keys["A"]]
        assert (resident.loads, resident.evictions) == (4, 2)
        run("A", "B", "C")  # all in use at once: none is evicted while it is
        assert sorted(resident.resident) == sorted(keys.values())
        assert (resident.loads, resident.evictions) == (5, 2)
        run(None)  # base rows only: the LoRA layers are switched off...
        run("C")  # ...and on again; the bound holds again once the others are idle
        assert resident.resident == [keys["B"], keys["C"]]
        assert resident.evictions == 3
    finally:
        engine.close()


def bad_adapters(setup: Setup, root: Path) -> dict[str, tuple[AdapterRef, str]]:
    """Adapters that must be refused, each with what its error must say."""
    good = setup.adapters["A"].path
    config = json.loads((good / "adapter_config.json").read_text())

    def folder(name: str, config_changes: dict[str, Any], weights: bytes | None) -> Path:
        path = root / name
        path.mkdir()
        (path / "adapter_config.json").write_text(json.dumps({**config, **config_changes}))
        if weights is not None:
            (path / "adapter_model.safetensors").write_bytes(weights)
        return path

    weights = (good / "adapter_model.safetensors").read_bytes()
    pickled = folder("pickled", {}, None)
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    experts = make_adapter(
        setup.base_dir, root / "experts", 4, target_modules=["gate_proj", "up_proj"]
    )
    wider = make_adapter(setup.base_dir, root / "wider", 5, r=16)
    cases = {
        "pickled": (pickled, "adapter_model.bin.*safetensors only"),
        "corrupt": (folder("corrupt", {}, b"\x00garbage" * 8), "not a readable safetensors"),
        "missing": (root / "absent", "not found"),
        "ia3": (folder("ia3", {"peft_type": "IA3"}, weights), "only LORA"),
        "bias": (folder("bias", {"bias": "all"}, weights), "changes the base model"),
        # peft saves LoRA on DeepSeek-V3's routed experts as target_parameters...
        "experts": (experts, "MoE experts"),
        # ...and turns such target_modules into them at load: caught after loading.
        "experts_late": (
            folder("late", {"target_modules": ["gate_proj", "up_proj"]}, weights),
            "ParamWrapper",
        ),
        # rank-16 weights under a rank-8 config: peft's size mismatch.
        "shapes": (
            folder("shapes", {}, (wider / "adapter_model.safetensors").read_bytes()),
            "size mismatch",
        ),
    }
    return {name: (AdapterRef(f"bad_{name}", path), match) for name, (path, match) in cases.items()}


def test_an_adapter_that_cannot_be_served_fails_only_its_request(
    setup: Setup, tmp_path: Path
) -> None:
    bad = bad_adapters(setup, tmp_path)
    engine = setup.engine(max_batch=16)

    def refused(name: str) -> Request:
        request = setup.request(PROMPTS[0], None)
        request.adapter = bad[name][0]
        return request

    try:
        for good in ([None], ["A", None]):  # failing on the bare base, then on a PeftModel
            with held(engine):
                served = [engine.submit(setup.request(PROMPTS[0], n)) for n in good]
                failed = [engine.submit(refused(name)) for name in bad]
            for name, future in zip(bad, failed, strict=True):
                with pytest.raises(AdapterLoadError, match=bad[name][1]):
                    future.result(timeout=60)
            for name, future in zip(good, served, strict=True):
                setup.check(future, PROMPTS[0], name)
            assert engine.adapters.resident == [setup.adapters[n].key for n in good if n]
            tuner_layers = [m for m in engine.model.modules() if isinstance(m, BaseTunerLayer)]
            assert all(type(m).__name__ == "Linear" for m in tuner_layers)
            assert bool(tuner_layers) is engine.adapters.wrapped  # nothing half-loaded is left
        assert engine.adapters.failures == 2 * len(bad)
        assert engine.alive
    finally:
        engine.close()


@pytest.mark.parametrize("key", ["", "__base__", "default", "a-b", "a.b", "x" * 65])
def test_adapter_keys_are_checked(key: str) -> None:
    with pytest.raises(SpecError, match="adapter key"):
        AdapterRef(key, Path("/nowhere"))
