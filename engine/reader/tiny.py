"""A tiny randomly initialised reader, for tests and development only.

Same architecture family and the same real SmolLM2 tokenizer as the default reader,
so every code path (tokenising, left padding, generation, log-probs, saving and
loading a folder) is exercised in milliseconds instead of seconds. Its answers are
gibberish: never use it for anything a user sees.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from engine.device import pick_device
from engine.reader.reader import Reader, default_tokenizer

#: model_type -> (config class name, model class name) for the verified architectures.
_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
}

_tokenizers: dict[str, object] = {}


def _tokenizer(cache_dir: str | Path | None):
    key = str(cache_dir)
    if key not in _tokenizers:
        _tokenizers[key] = default_tokenizer(cache_dir)
    return _tokenizers[key]


def tiny_config(model_type: str = "llama", vocab_size: int = 49152, **overrides):
    """A small config of ``model_type``: hidden 64, 2 layers, 4 heads (2 KV), FFN 128, tied embeddings."""
    import transformers

    if model_type not in _CLASSES:
        raise ValueError(f"no tiny config for model_type {model_type!r}; known: {', '.join(_CLASSES)}")
    cfg_cls = getattr(transformers, _CLASSES[model_type][0])
    kw = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        # Wider than the usual 0.02 so that random logits are well separated and greedy
        # choices do not hinge on float rounding.
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        architectures=[_CLASSES[model_type][1]],
    )
    kw.update(overrides)
    return cfg_cls(**kw)


def _state_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def make_tiny_reader(
    seed: int = 0,
    *,
    model_type: str = "llama",
    device: str | torch.device | None = "cpu",
    cache_dir: str | Path | None = None,
) -> Reader:
    """A randomly initialised reader (test/dev utility), identical for identical ``seed``.

    Uses SmolLM2's real tokenizer (49,152 tokens; cached beside the default reader, ~5 s
    the very first time). The global torch RNG is left untouched. Save it with
    ``reader.save(folder)`` to get a model folder that ``load_reader(folder)`` accepts.
    """
    import transformers

    tok = _tokenizer(cache_dir)
    cfg = tiny_config(model_type, vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    model_cls = getattr(transformers, _CLASSES[model_type][1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(cfg)
    model.to(device=pick_device(device), dtype=torch.float32)
    # Hashed now, not lazily: the fingerprint names the weights as made, whatever is
    # written into them later (a weight patch applied, a test's in-place change).
    return Reader(model, tok, name=f"tiny-{model_type}-seed{seed}", weights_sha256=_state_hash(model))
