"""A real English sentence corpus built offline from docstrings of installed packages,
and its MiniLM embeddings, cached in bench/_data/ (gitignored) so reruns are free.

Why docstrings: recall of an approximate index must be judged on real embeddings
(random vectors have no neighbourhood structure and make every index look bad), and
the machine has no internet; the venv's site-packages hold ~100k English sentences.
"""
from __future__ import annotations

import ast
import hashlib
import re
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "_data"
PACKAGES = ("torch", "transformers", "numpy", "faiss", "sqlite_utils", "PySide6", "setuptools", "pip",
            "tokenizers", "huggingface_hub", "safetensors", "platformdirs", "pytest", "_pytest", "jinja2",
            "networkx", "sympy", "fsspec", "filelock", "packaging", "yaml", "click", "pluggy")
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_BAD = re.compile(r"(>>>|::|\$|\\|`{2}|==|->|\{|\}|_\w+_|\bdef\b|\bself\b|https?://|\.py\b|\[\d)")


def _site_packages() -> Path:
    for p in map(Path, sys.path):
        if p.name == "site-packages" and p.is_dir():
            return p
    raise RuntimeError("no site-packages on sys.path")


def _docstrings(path: Path):
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
    except (SyntaxError, ValueError, RecursionError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


def sentences(limit: int = 200_000) -> list[str]:
    """Distinct English-looking sentences of 20-300 characters, in a fixed shuffled order.

    Extracting takes about a minute; the list is cached in bench/_data/sentences.txt.
    """
    cached = DATA / "sentences.txt"
    if cached.exists():
        return cached.read_text(encoding="utf-8").split("\n")
    root = _site_packages()
    seen: set[str] = set()
    out: list[str] = []
    for pkg in PACKAGES:
        base = root / pkg
        if not base.is_dir():
            continue
        for f in sorted(base.rglob("*.py")):
            for doc in _docstrings(f):
                for para in doc.split("\n\n"):
                    para = " ".join(para.split())
                    for s in _SPLIT.split(para):
                        s = s.strip()
                        if not (20 <= len(s) <= 300) or not s[0].isupper() or s[-1] not in ".!?":
                            continue
                        if _BAD.search(s) or sum(c.isalpha() for c in s) < 0.75 * len(s):
                            continue
                        if s not in seen:
                            seen.add(s)
                            out.append(s)
            if len(out) >= limit:
                break
    rng = np.random.default_rng(1234)
    out = [out[i] for i in rng.permutation(len(out))]
    DATA.mkdir(parents=True, exist_ok=True)
    cached.write_text("\n".join(out), encoding="utf-8")
    return out


def real_embeddings(n: int = 30_000, batch: int = 2_000, log=print) -> tuple[list[str], np.ndarray]:
    """(texts, float32 [n, 384]) for the first n corpus sentences; encoded once, then cached."""
    texts = sentences()[:n]
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    DATA.mkdir(parents=True, exist_ok=True)
    cache = DATA / f"minilm_{len(texts)}_{digest}.npy"
    if cache.exists():
        return texts, np.load(cache)
    part = DATA / f"minilm_{len(texts)}_{digest}.partial.npy"
    done = np.load(part) if part.exists() else np.zeros((0, 384), np.float32)
    from engine.encode import get_default_encoder

    enc = get_default_encoder()
    t0 = time.perf_counter()
    while len(done) < len(texts):
        chunk = texts[len(done) : len(done) + batch]
        done = np.concatenate([done, enc.encode(chunk)])
        np.save(part, done)  # resumable
        log(f"encoded {len(done):,}/{len(texts):,} ({len(done) / (time.perf_counter() - t0):.0f}/s)")
    np.save(cache, done)
    part.unlink(missing_ok=True)
    return texts, done


if __name__ == "__main__":
    s = sentences()
    print(len(s), "sentences; e.g.", *s[:5], sep="\n  ")
