"""A tiny random Qwen3 model and tokenizer built offline, in seconds.

Why: tests, benchmarks and the quick demo need a real `transformers` causal LM with a chat
template that trains under TRL and round-trips through the Hub, without downloading anything.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "The capital of France is Paris.", "Who wrote Hamlet? William Shakespeare.",
    "The answer is \\boxed{Unknown} when not sure.", "<think> step by step </think> <answer> 42 </answer>",
    "In 1969 Neil Armstrong walked on the Moon.", "I don't know the answer to that question.",
    "A conversation between User and Assistant. The Assistant must think step by step.",
    "Mount Everest is the highest mountain; the Nile is a long river in Africa.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 the a an of in on and or not yes no",
]


def build_tokenizer(vocab_size: int = 512, corpus: tuple[str, ...] = ()):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4 + list(corpus), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(out_dir: str | Path, seed: int = 0, hidden_size: int = 64, layers: int = 2, *,
                     corpus: tuple[str, ...] = (), vocab_size: int = 512, max_positions: int = 1024) -> Path:
    """Write a random tiny Qwen3ForCausalLM + tokenizer to `out_dir` and return it. A task's texts as
    `corpus` (with a larger `vocab_size`) give a tokenizer that spends few tokens on them."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    out = Path(out_dir)
    tokenizer = build_tokenizer(vocab_size, corpus)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=hidden_size // 4, max_position_embeddings=max_positions, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
