"""`plugmem pkm grow | usage | eval`: product-key memory layers, and `--pkm DIR` for predict and eval.

``grow`` runs the job ``engine.mechanisms.pkm.train`` here (Ctrl+C stops it at its last
checkpoint; the same command resumes it); ``usage`` and ``eval`` read a text (corpus files
or a pack) through the reader with the layer: its memory usage, and its perplexity with and
without the layer. ``--heldout`` keeps only the documents the memory held out when grown.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

from engine.cli.common import EXIT_INTERRUPTED, CliError, Output, add_command, run_job
from engine.cli_args import positive

DEFAULT_TEXT_TOKENS = 32_768


def _pkm_error() -> type[Exception]:
    from engine.mechanisms.pkm.config import PKMError

    return PKMError


def _reader(a):
    from engine.reader import load_reader
    from engine.reader.reader import ReaderError

    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    try:
        return load_reader(a.reader, a.device)
    except ReaderError as exc:
        raise CliError(str(exc)) from None


def load_pkm(folder: str, reader):
    """The layer in ``folder`` for ``reader`` (a bad folder or another reader's: one line, exit 2)."""
    from engine.mechanisms.pkm.mechanism import PKMMechanism

    try:
        return PKMMechanism.load(folder, reader)
    except _pkm_error() as exc:
        raise CliError(str(exc)) from None


@contextmanager
def pkm_attached(a, reader) -> Iterator[Any]:
    """``--pkm DIR`` of predict / eval: the layer plugged into ``reader`` for the whole command
    (None when not asked for)."""
    if not getattr(a, "pkm", None):
        yield None
        return
    mech = load_pkm(a.pkm, reader)
    with mech.attach(reader):
        yield mech


def pkm_line(folder: str, mech) -> str:
    """The line predict prints when ``--pkm`` was active."""
    return f"product-key memory: {folder} (layer {mech.layer}, {mech.memory.config.slots:,} slots)"


def add_pkm_arg(sp) -> None:
    sp.add_argument("--pkm", metavar="DIR", help="plug in the product-key memory layer grown in DIR (`plugmem pkm grow`)")


# ---------------------------------------------------------------------------- grow
def cmd_grow(a, out: Output) -> int:
    from engine.mechanisms.pkm.config import preset
    from engine.mechanisms.pkm.train import GrowConfig, run

    cfg: dict[str, Any] = {"out": a.out, "corpus": a.paths, "reader": a.reader, "device": a.device}
    try:
        if a.preset:
            cfg["slots"] = preset(a.preset)
        for name in ("slots", "layer", "steps", "batch", "micro_batch", "seq_len", "heads", "k", "key_dim", "query_norm",
                     "placement", "init", "heldout", "seed", "threads", "max_tokens", "checkpoint_every"):
            v = getattr(a, name)
            if v is not None:
                cfg[name] = v
        config = GrowConfig.from_dict(cfg)
        res = run_job("grow", run, config, a, out)
    except _pkm_error() as exc:
        raise CliError(str(exc)) from None
    if res is None:
        return EXIT_INTERRUPTED

    def human() -> str:
        u = res["usage"]
        before, after = res["heldout_ppl_without"], res["heldout_ppl_with"]
        resumed = f" (resumed at step {res['resumed_from']:,})" if res["resumed_from"] else ""
        return "\n".join([
            f"grew {res['steps_done']:,} steps{resumed} in {res['seconds']:.0f} s: {res['slots']:,} slots at layer "
            f"{res['layer']}, memory in {res['out']}",
            f"documents: {res['train_documents']:,} trained on ({res['train_tokens']:,} tokens), "
            f"{res['heldout_documents']:,} held out ({res['heldout_tokens']:,} tokens)",
            f"held-out perplexity: {before:.3f} without the layer, {after:.3f} with it ({1 - after / before:+.1%})",
            f"memory usage (held out): {u['used']:.1%} of slots used, KL to uniform {u['kl_weights']:.3f}, "
            f"Gini {u['gini']:.3f}",
        ])

    out.emit(res, human)
    return 0


# ---------------------------------------------------------------------------- usage / eval
def _text_windows(a, reader, mech):
    """Windows of ``--text`` (all its documents, or with ``--heldout`` those the layer held out)."""
    from engine.mechanisms.pkm.corpus import load_corpus, windows

    corpus = load_corpus(a.text)
    names = sorted(corpus.documents)
    if a.heldout:
        held = set(mech.meta.get("corpus", {}).get("heldout_documents") or [])
        names = [n for n in names if n in held]
        if not names:
            raise CliError(f"none of the documents of {', '.join(a.text)} is one the layer held out when grown "
                           f"(it was grown on {', '.join(mech.meta.get('corpus', {}).get('sources') or ['?'])}); "
                           "drop --heldout to read all of it")
    w = windows(reader.tokenizer, corpus, names, a.seq_len, a.max_tokens)
    if w.tokens < 2:
        raise CliError(f"{', '.join(a.text)}: too little text to measure (fewer than 2 tokens)")
    return corpus, names, w


def _measure(a, *, usage: bool) -> dict[str, Any]:
    from engine.mechanisms.pkm.train import heldout_nll, lower_states, memory_usage

    reader = _reader(a)
    mech = load_pkm(a.dir, reader)
    try:
        corpus, names, w = _text_windows(a, reader, mech)
    except _pkm_error() as exc:
        raise CliError(str(exc)) from None
    h = lower_states(reader, mech.layer, w.ids)
    without = heldout_nll(reader, mech.layer, h, w)
    with_, counter = memory_usage(reader, mech.memory, mech.layer, h, w, mech.placement)
    data = {"memory": a.dir, "text": a.text, "documents": len(names), "tokens": w.tokens, "layer": mech.layer,
            "slots": mech.memory.config.slots, "heldout_only": bool(a.heldout),
            "perplexity_without": round(math.exp(without), 4), "perplexity_with": round(math.exp(with_), 4)}
    if usage:
        data["usage"] = counter.report().to_dict()
    return data


def cmd_usage(a, out: Output) -> int:
    data = _measure(a, usage=True)

    def human() -> str:
        u = data["usage"]
        return "\n".join([
            f"memory usage of {data['memory']} ({data['slots']:,} slots, layer {data['layer']}) over "
            f"{data['tokens']:,} tokens of {data['documents']:,} documents",
            f"  slots used          {u['used']:.1%}  ({round(u['used'] * u['slots']):,} of {u['slots']:,})",
            f"  top-1 slots used    {u['top1_used']:.1%}",
            f"  KL to uniform       {u['kl_weights']:.3f} (weights), {u['kl_counts']:.3f} (access counts) nats; "
            f"{math.log(u['slots']):.3f} = one slot takes all",
            f"  Gini                {u['gini']:.3f}",
            f"  slots holding 50 / 90 / 99 % of the weight: {u['slots_50']:,} / {u['slots_90']:,} / {u['slots_99']:,}",
        ])

    out.emit(data, human)
    return 0


def cmd_eval(a, out: Output) -> int:
    data = _measure(a, usage=False)
    gain = 1 - data["perplexity_with"] / data["perplexity_without"]
    data["gain"] = round(gain, 5)

    def human() -> str:
        part = "held-out documents" if data["heldout_only"] else "documents"
        return (f"perplexity over {data['tokens']:,} tokens of {data['documents']:,} {part}: "
                f"{data['perplexity_without']:.3f} without the layer, {data['perplexity_with']:.3f} with it ({gain:+.1%})")

    out.emit(data, human)
    return 0


# ---------------------------------------------------------------------------- parsers
def add_parsers(sub, common) -> None:
    from engine.mechanisms.pkm.config import INITS, PLACEMENTS, PRESETS, QUERY_NORMS

    group = sub.add_parser("pkm", help="product-key memory layers: grow one on a corpus, see its usage, measure it",
                           description="Product-key memory layers beside a feed-forward block of the reader.")
    pkm_sub = group.add_subparsers(dest="pkm_cmd", required=True, metavar="COMMAND")

    def reader_args(sp) -> None:
        sp.add_argument("--reader", help="reader model folder (default: the bundled SmolLM2-135M-Instruct)")
        sp.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)")

    sp = add_command(pkm_sub, [common], "grow", cmd_grow,
                     "grow a product-key memory layer on a pack's entries or corpus files (resumes an interrupted run)")
    sp.add_argument("paths", nargs="+", metavar="PACK_OR_PATH")
    sp.add_argument("--out", required=True, metavar="DIR", help="folder of the layer (and of its checkpoint)")
    sp.add_argument("--preset", choices=list(PRESETS),
                    help="size: quick = 16,384 slots, standard = 65,536 (the default), large = 262,144 (a GPU)")
    sp.add_argument("--slots", type=positive, help="number of slots, a square number (overrides --preset)")
    sp.add_argument("--layer", type=int, help="reader layer (default: the first of its upper third)")
    sp.add_argument("--steps", type=positive)
    sp.add_argument("--batch", type=positive, help="token windows per step (default 8)")
    sp.add_argument("--micro-batch", type=positive, help="windows per forward pass (default 2)")
    sp.add_argument("--seq-len", type=positive, help="tokens per window (default 128)")
    sp.add_argument("--heads", type=positive)
    sp.add_argument("-k", type=positive, help="slots read per head (default 32)")
    sp.add_argument("--key-dim", type=positive)
    sp.add_argument("--query-norm", choices=QUERY_NORMS)
    sp.add_argument("--placement", choices=PLACEMENTS, help="beside the FFN (default) or replacing it (ablation)")
    sp.add_argument("--init", choices=INITS, help="values at zero (default: the reader unchanged) or random")
    sp.add_argument("--heldout", type=float, help="share of documents held out (default 0.2)")
    sp.add_argument("--seed", type=int)
    sp.add_argument("--threads", type=positive)
    sp.add_argument("--max-tokens", type=positive, help="train on at most this many tokens")
    sp.add_argument("--checkpoint-every", type=positive)
    reader_args(sp)

    for name, fn, help in (("usage", cmd_usage, "memory usage of a layer over a text (slots used, KL, Gini)"),
                           ("eval", cmd_eval, "perplexity of a text with and without a layer")):
        sp = add_command(pkm_sub, [common], name, fn, help)
        sp.add_argument("dir", metavar="DIR")
        sp.add_argument("--text", nargs="+", required=True, metavar="FILE_OR_PACK")
        sp.add_argument("--heldout", action="store_true", help="only the documents the layer held out when grown")
        sp.add_argument("--seq-len", type=positive, default=128)
        sp.add_argument("--max-tokens", type=positive, default=DEFAULT_TEXT_TOKENS)
        reader_args(sp)
