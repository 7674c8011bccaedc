"""A tiny, randomly initialised DeepSeek-V3-architecture MoE causal LM, made locally.

It exercises the real `from_pretrained` path (config, safetensors weights, tokenizer,
chat template) with no model hub: transformers' native `DeepseekV3ForCausalLM` with a
few layers, routed experts with top-k routing and a shared expert, and a byte-level BPE
tokenizer trained in under a second on a built-in corpus. Random weights: its text is
gibberish, but every code path of a real DeepSeek-V3 model runs.
"""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, PreTrainedTokenizerFast

VOCAB_SIZE = 2048
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = (
    "the queue keeps every job in order while workers pull tasks and write results",
    "a small model turns each sentence into numbers that capture its meaning",
    "refunds for annual plans are prorated and paid back within ten working days",
    "experts in a mixture of experts layer each see the tokens the router sends them",
    "user assistant system hello thanks please help me with my question about the plan",
    "0 1 2 3 4 5 6 7 8 9 , . ? ! : ; ' \" ( ) [ ] { } - + = / \\ @ # $ % & *",
)


def tiny_config(vocab_size: int = VOCAB_SIZE) -> DeepseekV3Config:
    """1.5 M parameters: 4 layers (the first dense), 8 routed experts, top-2, 1 shared."""
    return DeepseekV3Config(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        moe_intermediate_size=64,
        num_hidden_layers=4,
        first_k_dense_replace=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_shared_experts=1,
        n_group=2,
        topk_group=1,
        q_lora_rank=64,
        kv_lora_rank=32,
        qk_rope_head_dim=16,
        qk_nope_head_dim=16,
        v_head_dim=32,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )


def tiny_tokenizer(vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on CORPUS, left-padded for batched generation."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS * 20, trainer=trainer)
    pad, bos, eos = SPECIAL_TOKENS
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe, bos_token=bos, eos_token=eos, pad_token=pad, padding_side="left"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_deepseek(target: Path, seed: int = 0) -> Path:
    """Write the tiny model to `target` with `save_pretrained` (safetensors only)."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    model = DeepseekV3ForCausalLM(tiny_config(len(tokenizer)))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target
