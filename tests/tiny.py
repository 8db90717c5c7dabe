"""A tiny random Llama for tests: real transformers code, a few hundred kB of weights, no tokenizer.

Usage (tests/ is on sys.path under pytest's default import mode):

    from tiny import make_tiny_llama
    model = make_tiny_llama(tmp_path / "base")   # also saved there with save_pretrained
"""

from __future__ import annotations

from pathlib import Path


def make_tiny_llama(
    path: str | Path | None = None,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 256,
    seed: int = 0,
):
    """A seeded random LlamaForCausalLM in fp32 eval mode; saved (safetensors + config) when path is given.

    With the defaults q_proj/o_proj are [64, 64], k_proj/v_proj [32, 64] (kv_heads * head_dim = 2 * 16),
    and the MLP is [128, 64] / [64, 128].
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    if path is not None:
        model.save_pretrained(Path(path))
    return model


def save_word_tokenizer(path: str | Path, words: list[str]):
    """Save a whitespace word-level tokenizer next to a tiny model: ids 0-3 are <pad> <s> </s> <unk>
    (the tiny Llama's pad/bos/eos ids), then `words` in order. Returns the tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(Path(path))
    return tokenizer
