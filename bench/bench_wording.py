"""The memory branch on questions worded unlike its entries (issue 20): the baseline to beat.

    python bench/bench_wording.py [--probes 60] [--edits 40] [--ends 40] [--modes dpm]
                                  [--domains geography,chemistry,airports] [--append]

Per domain, on relations the branch never saw in training:
* geography, chemistry: the demo's held-out relations, asked in the held-out wordings of
  ``bench/data/wording_split.json`` (files made by ``bench/make_wording_split.py``);
* airports: the third domain (``bench/data/airports``, ``bench/make_third_domain.py``),
  never used in training or calibration; its pack is built from its facts in the workspace.
Figures (k = 5, the pack plugged): probe accuracy in the entry's own wording and in each
held-out wording kind (type-first, interrogative, reordered) with the reader alone in
brackets; edits (applied through the normal edit path and undone): efficacy on the entry
wording, the same edit asked in a held-out wording ("paraphrase", kinds in turn) and
locality on probes of other subjects; "ends": of ``--ends`` prompts per wording kind
answered with up to 24 new tokens, the share of right answers that are the expected object
plus punctuation at most, the share of all answers that repeat a word pair and of all
answers longer than their object plus punctuation, with each stop rule of ``RULES`` in the
same run (first sentence only; also where the answer repeats; also at the end of the copied
entry's sentence, shipped). The table shows the first and the shipped rule; ``--json-out``
has all three.
Everything goes through engine.evaluate (the code behind ``plugmem eval`` / ``eval-edits``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench._results import pct, publish, sample  # noqa: E402
from bench._wordings import KINDS  # noqa: E402
from engine.demo import ensure_demo_workspace  # noqa: E402
from engine.evaluate import evaluate_edits, evaluate_probes, read_edits, read_probes  # noqa: E402
from engine.evaluate.probes import answer_batch  # noqa: E402
from engine.explain import Predictor  # noqa: E402
from engine.jobs.build_memory import build_memory  # noqa: E402
from engine.mechanisms import dpm  # noqa: E402
from engine.memory import Memory  # noqa: E402
from engine.probe_files import Probe, is_correct  # noqa: E402
from engine.reader import generation  # noqa: E402
from engine.session import open_session  # noqa: E402

DATA = ROOT / "bench" / "data"


def files_of(domain: str) -> Path:
    return DATA / "airports" if domain == "airports" else DATA / "wording" / domain


def pack_of(domain: str, ws: dict) -> str:
    if domain != "airports":
        return next(p for p in ws["packs"] if Path(p).stem == domain)
    pack = Path(ws["folder"]) / "airports.plugmem"
    build_memory({"pack": str(pack), "inputs": [str(DATA / "airports" / "facts.jsonl")], "name": "airports",
                  "author": "bench"}, progress=lambda *a: None, should_stop=lambda: False)  # resumes: a no-op once built
    return str(pack)


def worded(probes: list[Probe], kind: str) -> list[Probe]:
    """The probes asked in one held-out wording kind (no paraphrases)."""
    out = []
    for p in probes:
        kinds = p.kinds if hasattr(p, "kinds") else list(KINDS)
        if kind in kinds:
            out.append(Probe(p.paraphrases[kinds.index(kind)], p.answer, [], p.relation, p.subject, p.split, p.where))
    return out


_WORD = re.compile(r"\w+")


def ends_clean(answer: str, expected: str) -> bool:
    """The answer is the expected object and at most punctuation after it."""
    a = answer.strip()
    return is_correct(a, expected) and not _WORD.search(a[len(expected.strip()):])


def repeats(answer: str) -> bool:
    words = [w.lower() for w in _WORD.findall(answer)]
    pairs = list(zip(words, words[1:]))
    return len(set(pairs)) < len(pairs)


def longer(answer: str, expected: str) -> bool:
    """The answer says more than its object plus punctuation: words after the object when it
    starts with it, else more words than the object has."""
    a = answer.strip()
    if is_correct(a, expected):
        return not ends_clean(a, expected)
    return len(_WORD.findall(a)) > len(_WORD.findall(expected))


#: The stop rules compared in one run: the first sentence only (before issue 20), also where
#: the answer repeats itself (issue 20's first installment), also at the end of the copied
#: entry's sentence (``generation.span_end``, shipped).
RULES = ("sentence", "sentence_or_repeat", "span")


@contextmanager
def stop_rule(rule: str) -> Iterator[None]:
    """Decode with one of ``RULES`` (the shipped one is "span")."""
    if rule not in RULES:
        raise ValueError(f"unknown stop rule {rule!r}; known: {', '.join(RULES)}")
    saved = generation.answer_stop, generation.repeat_end, generation.span_end
    if rule != "span":
        generation.span_end = lambda text, entries: None
    if rule == "sentence":
        generation.answer_stop = lambda text, entries=(): generation.answer_end(text)
        generation.repeat_end = lambda text: None
    try:
        yield
    finally:
        generation.answer_stop, generation.repeat_end, generation.span_end = saved


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--probes", type=int, default=60, help="probes per domain (each asked in 4 wordings)")
    ap.add_argument("--edits", type=int, default=40, help="edits per domain")
    ap.add_argument("--locality", type=int, default=40, help="locality probes per domain")
    ap.add_argument("--ends", type=int, default=40, help="prompts per wording kind for the answer-length check")
    ap.add_argument("--modes", default="dpm")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--branch", help="branch folder (default: the shipped one)")
    ap.add_argument("--workspace", help="demo workspace folder (default: the app's)")
    ap.add_argument("--domains", default="geography,chemistry,airports")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--label", default="", help="what this run is (in the table's title)")
    ap.add_argument("--json-out")
    ap.add_argument("--append", action="store_true", help="append the table to bench/RESULTS.md")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    modes = a.modes.split(",")
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    ws = ensure_demo_workspace(folder=Path(a.workspace) if a.workspace else None)
    branch_dir = Path(a.branch) if a.branch else dpm.default_branch_path()
    predictor = Predictor.from_session(open_session(branch=branch_dir if "dpm" in modes else None))
    report: dict = {"branch": str(branch_dir), "k": a.k, "domains": {}}
    for domain in a.domains.split(","):
        src = files_of(domain)
        raw = [json.loads(line) for line in open(src / "probes.jsonl", encoding="utf-8")]
        probes = read_probes(src / "probes.jsonl")
        for p, r in zip(probes, raw):
            p.kinds = r["kinds"]
        picked = sample(probes, a.probes, 1)
        loc = sample([p for p in probes if p not in picked], a.locality + 40, 3)
        edits = read_edits(src / "edits.jsonl")[: a.edits]
        sets = {"entry": [Probe(p.prompt, p.answer, [], p.relation, p.subject, p.split, p.where) for p in picked]}
        sets.update({k: worded(picked, k) for k in KINDS})
        out = report["domains"][domain] = {}
        with Memory.open(pack_of(domain, ws)) as mem:
            for mode in modes:
                r = out[mode] = {}
                for name, ps in sets.items():
                    t = time.perf_counter()
                    res = evaluate_probes(predictor, [mem], ps, mode, k=a.k, paraphrases=False)
                    r[name] = {key: res[key] for key in ("n", "accuracy", "accuracy_without_memory", "hit_at_k",
                                                         "failures", "by_relation")}
                    print(f"{domain} {mode} {name}: n={res['n']} acc {pct(res['accuracy'])} (without "
                          f"{pct(res['accuracy_without_memory'])}) hit@{a.k} {pct(res['hit_at_k'])} "
                          f"[{time.perf_counter() - t:.0f} s]", flush=True)
                t = time.perf_counter()
                e = evaluate_edits(predictor, [mem], edits, loc, mode, k=a.k, locality_limit=a.locality)
                r["edits"] = {key: e[key] for key in ("n", "efficacy", "efficacy_before", "generalization",
                                                      "locality", "n_locality", "edit_retrieved", "restored", "failures")}
                print(f"{domain} {mode} edits: n={e['n']} efficacy {pct(e['efficacy'])}, held-out wording "
                      f"{pct(e['generalization'])}, locality {pct(e['locality'])} [{time.perf_counter() - t:.0f} s]",
                      flush=True)
                if a.ends:
                    ps = [p for name in sets for p in sets[name][: a.ends]]
                    for rule, key in (("sentence", "ends_before"), ("sentence_or_repeat", "ends_repeat"),
                                      ("span", "ends")):
                        t = time.perf_counter()
                        with stop_rule(rule):
                            got, _ = answer_batch(predictor, [p.prompt for p in ps], [mem], mode, k=a.k,
                                                  max_new_tokens=24)
                        right = [(g, p) for g, p in zip(got, ps) if is_correct(g, p.answer)]
                        r[key] = {"rule": rule, "n": len(ps), "correct": len(right),
                                  "clean_of_correct": round(sum(ends_clean(g, p.answer) for g, p in right)
                                                            / max(1, len(right)), 4),
                                  "repeating": round(sum(repeats(g) for g in got) / max(1, len(got)), 4),
                                  "longer": round(sum(longer(g, p.answer) for g, p in zip(got, ps))
                                                  / max(1, len(got)), 4),
                                  "examples": [g for g, p in right if not ends_clean(g, p.answer)][:8]}
                        print(f"{domain} {mode} {key}: {r[key]} [{time.perf_counter() - t:.0f} s]", flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    load1 = os.getloadavg()

    def c(domain, mode, part, key):
        return pct(report["domains"][domain].get(mode, {}).get(part, {}).get(key))

    lines = [
        f"### bench_wording.py{' — ' + a.label if a.label else ''} — {time.strftime('%Y-%m-%d %H:%M')} (torch "
        f"{torch.__version__}, {a.threads} threads, {platform.machine()}; branch {branch_dir.name}; k = {a.k}; "
        f"{report['seconds']:.0f} s; load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end)",
        "",
        f"Held-out relations × held-out wordings; per domain {a.probes} probes (each asked in the entry's wording and "
        f"in 3 held-out wordings), {a.edits} edits, {a.locality} locality probes; reader alone in brackets.",
        "",
        "| domain | mode | entry wording | type-first | interrogative | reordered | hit@k (held-out wordings) | "
        "edit efficacy | edit, held-out wording | locality | answer = object (+ punct.): before → after | "
        "repeats: before → after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in report["domains"]:
        for mode in modes:
            r = report["domains"][d][mode]
            hits = [r[k]["hit_at_k"] for k in KINDS if r[k]["hit_at_k"] is not None]
            lines.append(
                f"| {d} | {mode} | " + " | ".join(f"{c(d, mode, k, 'accuracy')} ({c(d, mode, k, 'accuracy_without_memory')})"
                                                 for k in ("entry", *KINDS))
                + f" | {pct(sum(hits) / len(hits)) if hits else '–'} | {c(d, mode, 'edits', 'efficacy')} | "
                f"{c(d, mode, 'edits', 'generalization')} | {c(d, mode, 'edits', 'locality')} | "
                f"{c(d, mode, 'ends_before', 'clean_of_correct')} → {c(d, mode, 'ends', 'clean_of_correct')} | "
                f"{c(d, mode, 'ends_before', 'repeating')} → {c(d, mode, 'ends', 'repeating')} |")
    publish("\n".join(lines) + "\n", a.append)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
