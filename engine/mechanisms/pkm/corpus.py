"""The text a product-key memory is grown on: documents from a pack's entries or from the
files ``plugmem import`` reads, split by document into a training and a held-out part, and
cut into token windows.

A document is everything sharing a title (an entity's facts in the demo packs, a Markdown
section); an untitled entry or passage is a document of its own. Splitting by document keeps
every sentence about a held-out entity out of training, so held-out perplexity measures
what the memory learnt about the domain, not what it memorised of those sentences."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from engine.mechanisms.pkm.config import PKMError

PACK_SUFFIXES = (".plugmem", ".sqlite", ".db")


class CorpusTooSmall(PKMError):
    """Not enough documents or tokens to train on and hold some out."""


@dataclass
class Corpus:
    documents: dict[str, str]  # document name -> its text (entries / passages joined by newlines)
    sources: list[str]
    sha256: str = ""
    chars: int = 0

    def split(self, heldout_share: float, seed: int = 0, min_heldout: int = 1) -> tuple[list[str], list[str]]:
        """(train names, held-out names): documents ordered by a seeded hash of their name, the
        first ``max(min_heldout, round(share * n))`` held out. Needs two documents at least."""
        names = sorted(self.documents)
        n = len(names)
        n_held = max(min_heldout, round(heldout_share * n))
        if n < 2 or n - n_held < 1:
            raise CorpusTooSmall(
                f"{', '.join(self.sources)}: the corpus has {n} document{'s' if n != 1 else ''}, too few to split into "
                f"a training and a held-out part (held out: {n_held}); give at least {n_held + 1} documents "
                "(entries or sections with different titles, or several files)")
        order = sorted(names, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
        return sorted(order[n_held:]), sorted(order[:n_held])


@dataclass
class Windows:
    """Token windows of one part of the corpus: ``ids`` [n, T] long; ``tokens`` real tokens."""

    ids: torch.Tensor
    tokens: int
    documents: list[str] = field(default_factory=list)


def _add(docs: dict[str, list[str]], name: str, text: str) -> None:
    text = (text or "").strip()
    if text:
        docs.setdefault(name, []).append(text)


def load_corpus(paths: Sequence[str | Path]) -> Corpus:
    """Documents of the packs (``*.plugmem``: active entries) and corpus files / folders in
    ``paths``. ``PKMError`` names a missing path, a file that is not a corpus (with its line)
    and a corpus with no text at all."""
    from engine.store.corpus import CorpusError, corpus_files, parse_file

    if not paths:
        raise PKMError("no corpus given: name a pack or text files to grow the memory on")
    docs: dict[str, list[str]] = {}
    sources: list[str] = []
    h = hashlib.sha256()
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise PKMError(f"{p}: no such file or folder")
        sources.append(str(p))
        if p.is_file() and p.suffix.lower() in PACK_SUFFIXES:
            from engine.store import Pack
            from engine.store.pack import iter_entries

            try:
                pack = Pack.open(p, readonly=True)
            except Exception as exc:  # noqa: BLE001 - PackError, sqlite3 errors: said with the file
                raise PKMError(f"{p}: cannot read the pack ({exc})") from None
            with pack:
                for e in iter_entries(pack, status="active"):
                    _add(docs, f"{p.name}:{e.title}" if e.title else f"{p.name}#{e.id}", e.text)
            continue
        files = corpus_files(p)
        if not files:
            raise PKMError(f"{p}: no corpus files (.jsonl, .csv, .txt, .md) in this folder")
        for f in files:
            try:
                records = parse_file(f)
            except CorpusError as exc:
                raise PKMError(str(exc)) from None
            for i, rec in enumerate(records):
                title = rec.get("title")
                _add(docs, f"{f.name}:{title}" if title else f"{f.name}#{i + 1}", rec.get("text", ""))
    joined = {name: "\n".join(parts) for name, parts in docs.items()}
    if not joined:
        raise PKMError(f"{', '.join(sources)}: no text to grow a memory on (no active entries or passages with text)")
    for name in sorted(joined):
        h.update(name.encode() + b"\0" + joined[name].encode() + b"\0")
    return Corpus(joined, sources, h.hexdigest(), sum(len(t) for t in joined.values()))


def windows(tokenizer, corpus: Corpus, names: Sequence[str], seq_len: int, max_tokens: int | None = None) -> Windows:
    """The documents ``names`` tokenised, each ended by EOS, concatenated in name order and
    cut into windows of ``seq_len`` tokens (the last one padded with EOS, which is masked
    out of the loss by :func:`loss_mask`)."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for name in names:
        stream.extend(tokenizer(corpus.documents[name], add_special_tokens=False)["input_ids"])
        stream.append(eos)
        if max_tokens and len(stream) >= max_tokens:
            stream = stream[:max_tokens]
            break
    n = max(1, -(-len(stream) // seq_len))
    ids = torch.full((n * seq_len,), eos, dtype=torch.long)
    ids[:len(stream)] = torch.tensor(stream, dtype=torch.long)
    return Windows(ids.view(n, seq_len), len(stream), list(names))


def loss_mask(w: Windows) -> torch.Tensor:
    """[n, T] bool: which target positions are real tokens (the padding at the end is not)."""
    n, t = w.ids.shape
    return (torch.arange(n * t) < w.tokens).view(n, t)
