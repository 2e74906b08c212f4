"""Latency of "ask and explain" and of "edit -> changed prediction", with the bare reader as baseline.

    .venv/bin/python bench/bench_predict.py [--n 10] [--edits 10] [--threads 2] [--append]

On the demo geography pack (k = 5), the real reader and the shipped branch:
* baseline: the bare reader's greedy answer, no memory, all 8 new tokens, decoded by
  transformers' ``generate`` with plain ``nn.Linear`` products (as before draft
  verification and ``NarrowLinear``); then by ``greedy_generate`` (all 8 tokens, and
  stopping at the answer's end as every answer path does);
* ``Predictor.predict`` with explanation (answer with and without memory in one batched
  generate + leave-one-out of all 5 entries in one batched forward), DPM and context modes;
  "cold" = the prompt's entries have never been read, "warm" = asked again, "stored" =
  a new Predictor (a new session) whose entry-state store and key store hold the
  entries' states and statement keys (kept by the "cold" run, or by ``plugmem prepare``):
  nothing cached in the process, not even the bare reader's answer or a statement key;
  "stored, keys encoded" = the same with an empty key store (statement keys encoded at
  question time, as before they were kept on disk): the new-session baseline (the two
  new sessions alternate their order from prompt to prompt); "retrieval alone" times
  ``retrieve`` in the same two kinds of new session, the direct measure of the key store;
* edit -> changed prediction: ``Memory.edit`` (re-encode one entry, update the index in
  place) then ``predict`` without explanation; the edit is undone afterwards. Each edit
  is timed twice, its new text's reader states dropped before each: decoding one token
  per step with plain products (the baseline), and as shipped.

Targets (issue 3): prediction with explanation < 1 s for a short prompt; edit -> changed
prediction < 0.5 s.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.demo import ensure_demo_workspace  # noqa: E402
from engine.evaluate import is_correct, read_edits, read_probes  # noqa: E402
from engine.explain import Predictor, retrieve  # noqa: E402
from engine.explain.predict import reset_statement_keys  # noqa: E402
from engine.memory import Memory  # noqa: E402
from engine.reader import generation, narrow  # noqa: E402
from engine.reader.generation import greedy_generate  # noqa: E402
from bench._results import publish  # noqa: E402
from engine.resources import demo_dir  # noqa: E402
from engine.session import open_session  # noqa: E402


def ms(xs: list[float]) -> str:
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]
    return f"{1000 * statistics.median(xs):.0f} / {1000 * p90:.0f}"


@contextmanager
def plain_decoding(on: bool = True):
    """Decode as before draft verification and NarrowLinear (one token per step, F.linear)."""
    saved = generation.DRAFT_TOKENS, narrow.MAX_ROWS
    if on:
        generation.DRAFT_TOKENS, narrow.MAX_ROWS = 0, 0
    try:
        yield
    finally:
        generation.DRAFT_TOKENS, narrow.MAX_ROWS = saved


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10, help="prompts")
    ap.add_argument("--edits", type=int, default=10)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workspace", help="demo workspace folder (default: the app's)")
    ap.add_argument("--append", action="store_true", help="append the table to bench/RESULTS.md")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    ws = ensure_demo_workspace(folder=Path(a.workspace) if a.workspace else None)
    pack = next(p for p in ws["packs"] if Path(p).stem == "geography")
    # The bench's own store (a temporary folder): what the user's cache holds does not matter.
    tmp = tempfile.TemporaryDirectory(prefix="bench-states-")
    session = open_session(entry_states=True, cache_dir=tmp.name)  # the reader, the shipped branch, its store
    reader, branch = session.reader, session.branch

    def new_session(empty_key_store: bool = False) -> None:
        """No statement key in memory, as in a new process; keys from the bench's key store,
        or from an empty one (encoded at question time)."""
        os.environ["PLUGMEM_ENTRY_STATES"] = tempfile.mkdtemp(dir=tmp.name) if empty_key_store else tmp.name
        reset_statement_keys()

    new_session()  # retrieval keeps statement keys in the bench's folder too
    predictor = Predictor.from_session(session)
    probes = [p for p in read_probes(demo_dir() / "geography" / "probes_heldout.jsonl")
              if p.split == "heldout_relation"][: a.n]
    edits = read_edits(demo_dir() / "geography" / "edits.jsonl")[: a.edits]
    rows: list[tuple[str, str]] = []
    with Memory.open(pack) as mem:
        predictor.predict("Warm-up: the capital of France is", [mem], k=a.k)  # first-call overheads
        reader.generate("Warm-up", max_new_tokens=2)
        base, base_full, base_hf = [], [], []
        kinds = (("dpm", "cold"), ("dpm", "warm"), ("dpm", "stored"), ("dpm", "stored, keys encoded"), ("context", "cold"))
        times = {kind: [] for kind in kinds}
        retrieval: dict[bool, list[float]] = {True: [], False: []}  # keys encoded? -> seconds
        for i, p in enumerate(probes):
            b = reader.encode_batch([p.prompt])
            with plain_decoding():
                t = time.perf_counter()
                with torch.inference_mode():
                    reader.model.generate(**{k: b[k] for k in ("input_ids", "attention_mask")}, max_new_tokens=8,
                                          min_new_tokens=8, do_sample=False, pad_token_id=reader.tokenizer.pad_token_id)
                base_hf.append(time.perf_counter() - t)
            t = time.perf_counter()
            greedy_generate(reader, input_ids=b["input_ids"], attention_mask=b["attention_mask"], max_new_tokens=8,
                            stop_at_answer_end=False)
            base_full.append(time.perf_counter() - t)
            t = time.perf_counter()
            reader.generate(p.prompt, max_new_tokens=8)
            base.append(time.perf_counter() - t)
            order = kinds if i % 2 else kinds[:2] + (kinds[3], kinds[2]) + kinds[4:]  # alternate the two new sessions
            for mode, temp in order:
                if temp.startswith("stored"):
                    new_session("encoded" in temp)
                who = Predictor.from_session(session) if temp.startswith("stored") else predictor
                t = time.perf_counter()
                rec = who.predict(p.prompt, [mem], mode=mode, k=a.k, max_new_tokens=8)
                times[(mode, temp)].append(time.perf_counter() - t)
                if "encoded" in temp:  # back to the bench's key store
                    new_session()
                assert len(rec.retrieved) == a.k and all(r.loo_delta is not None for r in rec.retrieved)
            for fresh in ((False, True) if i % 2 else (True, False)):  # retrieval alone, new session
                new_session(fresh)
                t = time.perf_counter()
                retrieve(p.prompt, [mem], a.k)
                retrieval[fresh].append(time.perf_counter() - t)
            new_session()
        rows.append(("bare reader, all 8 new tokens, transformers generate, plain products (baseline)", ms(base_hf)))
        rows.append(("bare reader, all 8 new tokens (greedy_generate)", ms(base_full)))
        rows.append(("bare reader, stopping at the answer's end (at most 8 tokens)", ms(base)))
        rows.append((f"predict + explain, dpm, k={a.k}, cold entries", ms(times[("dpm", "cold")])))
        rows.append((f"predict + explain, dpm, k={a.k}, warm entries", ms(times[("dpm", "warm")])))
        rows.append((f"predict + explain, dpm, k={a.k}, new session, entries in the store, statement keys encoded "
                     "(baseline)", ms(times[("dpm", "stored, keys encoded")])))
        rows.append((f"predict + explain, dpm, k={a.k}, new session, entries and statement keys in the stores",
                     ms(times[("dpm", "stored")])))
        rows.append((f"predict + explain, context, k={a.k}", ms(times[("context", "cold")])))
        rows.append((f"retrieval alone, new session, statement keys encoded (baseline), k={a.k}", ms(retrieval[True])))
        rows.append((f"retrieval alone, new session, statement keys in the store, k={a.k}", ms(retrieval[False])))

        by_text = {e.text: e.id for e in mem.pack.iter_entries(status="active")}
        edit_t, edit_base, edit_only, changed, follows, same = [], [], [], 0, 0, 0
        for e in edits:
            before = predictor.predict(e.prompt, [mem], k=a.k, explain=False).answer
            answers = []
            for baseline in (True, False):
                predictor.forget_entries([e.new_text])  # as the first time this text is read
                with plain_decoding(baseline):
                    t = time.perf_counter()
                    mem.edit(by_text[e.old_text], text=e.new_text, author="bench")
                    t_edit = time.perf_counter()
                    rec = predictor.predict(e.prompt, [mem], k=a.k, explain=False)
                    t_end = time.perf_counter()
                mem.undo()
                (edit_base if baseline else edit_t).append(t_end - t)
                answers.append(rec.answer)
            edit_only.append(t_edit - t)
            changed += rec.answer != before
            follows += is_correct(rec.answer, e.new)
            same += answers[0] == answers[1]
        rows.append(("edit only (re-encode + index update)", ms(edit_only)))
        rows.append(("edit -> prediction, one token per step, plain products (baseline)", ms(edit_base)))
        rows.append((f"edit -> prediction (dpm, k={a.k}, no explanation)", ms(edit_t)))
    lines = [
        f"### bench_predict.py — {time.strftime('%Y-%m-%d %H:%M')} (torch {torch.__version__}, {a.threads} threads, "
        f"{platform.machine()}; SmolLM2-135M-Instruct + shipped branch; geography pack)",
        "",
        f"{len(probes)} held-out-relation prompts; {len(edits)} edits: the answer changed after {changed}, "
        f"and starts with the new object after {follows}; the baseline gave the same answer for {same}. "
        f"Ratio edit -> prediction / baseline: {statistics.median(edit_t) / statistics.median(edit_base):.2f}; "
        f"bare reader (8 tokens) / baseline: {statistics.median(base_full) / statistics.median(base_hf):.2f}; "
        f"explained, new session with the store / cold: "
        f"{statistics.median(times[('dpm', 'stored')]) / statistics.median(times[('dpm', 'cold')]):.2f}; "
        f"new session, statement keys stored / encoded: "
        f"{statistics.median(times[('dpm', 'stored')]) / statistics.median(times[('dpm', 'stored, keys encoded')]):.2f} "
        f"(retrieval alone {statistics.median(retrieval[False]) / statistics.median(retrieval[True]):.2f}). "
        "Latency in ms, median / p90.",
        "",
        "| what | ms (median / p90) |",
        "|---|---|",
    ] + [f"| {w} | {v} |" for w, v in rows]
    table = "\n".join(lines) + "\n"
    session.close()
    tmp.cleanup()
    publish(table, a.append)


if __name__ == "__main__":
    main()
