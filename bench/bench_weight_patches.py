"""Weight patches on the real reader (SmolLM2-135M): calibration on validation relations,
then efficacy / paraphrase / locality on held-out relations (issue 18).

Data: the demo edits (``resources/demo/{geography,chemistry}/edits.jsonl``), split by
relation: every third relation of each domain (sorted by name) is the VALIDATION split
that ``calibrate`` tunes delta, steps and layers on; the other relations are HELD OUT and
only ``report`` reads them. Locality probes: for calibration from ``probes_train.jsonl``,
for the report from ``probes_heldout.jsonl`` (other entities and wordings), in both cases
without the edited subjects. Facts the reader already answers are skipped (none is a patch).

    python -m bench.bench_weight_patches calibrate [--n 6] [--grid small]
    python -m bench.bench_weight_patches report --layers 0 29 --delta 1e-3 --steps 25 [--seq 1 10]

Each phase prints its figures and writes them as JSON under ``bench/_data/`` (git-ignored).
Timing figures come with a ratio against a baseline of the same run: a one-fact patch
against one greedy answer to its prompt; apply/remove against cloning the same tensors.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "resources" / "demo"
OUT = ROOT / "bench" / "_data"
DOMAINS = ("geography", "chemistry")


def split_edits():
    """(validation, heldout): lists of Edit, split by relation within each domain."""
    from engine.probe_files import read_edits

    val, held = [], []
    for d in DOMAINS:
        edits = read_edits(DEMO / d / "edits.jsonl")
        rels = sorted({e.relation for e in edits})
        val_rels = set(rels[::3])
        val += [e for e in edits if e.relation in val_rels]
        held += [e for e in edits if e.relation not in val_rels]
    return val, held


def pick(edits, n):
    """``n`` edits spread over domains and relations, deterministically (round robin by relation)."""
    by_rel: dict[str, list] = {}
    for e in sorted(edits, key=lambda e: zlib.crc32(e.prompt.encode())):
        by_rel.setdefault(e.relation, []).append(e)
    out, rels = [], sorted(by_rel)
    while len(out) < n and any(by_rel.values()):
        for r in rels:
            if by_rel[r] and len(out) < n:
                out.append(by_rel[r].pop(0))
    return out


def locality_probes(fname, edits, n):
    from engine.probe_files import read_probes

    subjects = {e.subject.lower() for e in edits}
    out = []
    for d in DOMAINS:
        probes = [p for p in read_probes(DEMO / d / fname)
                  if p.subject.lower() not in subjects and not any(s in p.prompt.lower() for s in subjects)]
        probes.sort(key=lambda p: zlib.crc32(p.prompt.encode()))
        out += probes[: n // len(DOMAINS)]
    return out


def facts_of(edits):
    from engine.mechanisms.weight_patches import Fact

    return [Fact(e.prompt, e.new, paraphrase=e.paraphrase, old=e.old, source=e.where) for e in edits]


def answers(reader, prompts, targets):
    ids = reader.tokenizer([" " + t.strip() for t in targets], add_special_tokens=False)["input_ids"]
    return reader.generate(list(prompts), max_new_tokens=min(12, max(len(r) for r in ids) + 1))


class Eval:
    """Answers of the facts' prompts and paraphrases and of the locality probes, before any patch."""

    def __init__(self, reader, facts, probes):
        self.reader, self.facts, self.probes = reader, facts, probes
        self.loc_before = answers(reader, [p.prompt for p in probes], [p.answer for p in probes])

    def measure(self, patches):
        from engine.mechanisms.weight_patches import applied
        from engine.probe_files import is_correct

        f = self.facts
        paras = [x for x in f if x.paraphrase]
        with applied(self.reader, patches):
            got = answers(self.reader, [x.prompt for x in f] + [x.paraphrase for x in paras],
                          [x.answer for x in f] + [x.answer for x in paras])
            loc = answers(self.reader, [p.prompt for p in self.probes], [p.answer for p in self.probes])
        n = len(f)
        return {
            "n": n, "n_paraphrases": len(paras), "n_locality": len(self.probes),
            "efficacy": sum(is_correct(g, x.answer) for g, x in zip(got, f)) / n,
            "paraphrase": sum(is_correct(g, x.answer) for g, x in zip(got[n:], paras)) / max(1, len(paras)),
            "locality": sum(a == b for a, b in zip(self.loc_before, loc)) / len(self.probes),
            "acc_before": sum(is_correct(a, p.answer) for a, p in zip(self.loc_before, self.probes)) / len(self.probes),
            "acc_after": sum(is_correct(a, p.answer) for a, p in zip(loc, self.probes)) / len(self.probes),
        }


def unanswered(reader, edits):
    from engine.probe_files import is_correct

    got = answers(reader, [e.prompt for e in edits], [e.new for e in edits])
    return [e for e, g in zip(edits, got) if not is_correct(g, e.new)]


def load():
    from engine.reader import load_reader

    t = time.perf_counter()
    reader = load_reader()
    print(f"reader {reader.name} on {reader.device} loaded in {time.perf_counter() - t:.1f} s", flush=True)
    return reader


def header():
    return {"date": datetime.now(timezone.utc).isoformat(timespec="minutes"), "machine": platform.processor() or
            platform.machine(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average": os.getloadavg()[0]}


GRIDS = {
    # (layers, delta, steps, lr), cheapest first (training runs only the blocks from the
    # first trained one up): the last block alone at two bounds, the last five, the FT-L
    # default (one early down-projection) and the paper's first + last blocks.
    "small": [([29], 2e-3, 25, 5e-3), ([29], 1e-2, 25, 5e-3), ([25, 26, 27, 28, 29], 2e-3, 25, 5e-3),
              ([3], 5e-3, 25, 5e-3), ([0, 29], 1e-3, 25, 5e-3)],
    # early blocks (run beside "small" once the last block proved non-local)
    "early": [([0], 5e-3, 25, 5e-3), ([1, 2, 3], 5e-3, 25, 5e-3), ([3], 2e-2, 25, 5e-3)],
}


def calibrate(args):
    from engine.mechanisms.weight_patches import PatchConfig, make_patch

    reader = load()
    val, _ = split_edits()
    edits = pick(unanswered(reader, pick(val, args.n * 2)), args.n)
    probes = locality_probes("probes_train.jsonl", val, args.locality)
    ev = Eval(reader, facts_of(edits), probes)
    rows = []
    for layers, delta, steps, lr in GRIDS[args.grid]:
        cfg = PatchConfig(layers=layers, delta=delta, steps=steps, lr=lr)
        t = time.perf_counter()
        patch = make_patch(reader, ev.facts, cfg, name="cal", known="skip", measure=False)
        secs = time.perf_counter() - t
        m = ev.measure([patch])
        row = {"layers": layers, "delta": delta, "steps": steps, "lr": lr, "steps_run": patch.metrics["steps"],
               "loss_last": round(patch.metrics["loss_last"], 4), "seconds": round(secs, 1), **m}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"phase": "calibrate", **header(), "validation_relations": sorted({e.relation for e in val}),
              "facts": [e.where for e in edits], "rows": rows}
    _write(f"weight_patches_calibrate_{args.grid}.json", result)


def report(args):
    from engine.mechanisms.weight_patches import PatchConfig, PatchStack, applied, make_patch, make_sequential

    reader = load()
    _, held = split_edits()
    cfg = PatchConfig(layers=args.layers, delta=args.delta, steps=args.steps, lr=args.lr,
                      locality_weight=args.locality_weight)
    pool = unanswered(reader, pick(held, max([args.batch] + args.seq) + 10))
    probes = locality_probes("probes_heldout.jsonl", held, args.locality)
    result = {"phase": "report", **header(), "config": cfg.__dict__, "heldout_relations": sorted({e.relation for e in held})}

    # One-fact patch time against one greedy answer to the same prompt (the baseline).
    one = facts_of(pool[:1])
    t = time.perf_counter()
    reader.generate(one[0].prompt, max_new_tokens=8)
    answer_s = time.perf_counter() - t
    t = time.perf_counter()
    p1 = make_patch(reader, one, cfg, name="one", measure=False)
    one_s = time.perf_counter() - t
    result["one_fact"] = {"seconds": round(one_s, 2), "steps": p1.metrics["steps"], "answer_seconds": round(answer_s, 3),
                          "ratio_to_answer": round(one_s / answer_s, 1)}
    print("one-fact patch:", result["one_fact"], flush=True)

    # Apply / remove time against cloning the same tensors.
    stack = PatchStack.of(reader)
    params = dict(reader.model.named_parameters())
    ap, rm, cl = [], [], []
    for _ in range(10):
        t = time.perf_counter(); stack.apply(p1); ap.append(time.perf_counter() - t)
        t = time.perf_counter(); stack.remove(p1); rm.append(time.perf_counter() - t)
        t = time.perf_counter(); [params[n].detach().clone() for n in p1.deltas]; cl.append(time.perf_counter() - t)
    result["apply_remove_ms"] = {"apply": round(1e3 * statistics.median(ap), 2), "remove": round(1e3 * statistics.median(rm), 2),
                                 "clone_baseline": round(1e3 * statistics.median(cl), 2),
                                 "apply_ratio": round(statistics.median(ap) / statistics.median(cl), 1),
                                 "bytes": p1.size_bytes}
    print("apply/remove:", result["apply_remove_ms"], flush=True)

    batch = facts_of(pool[: args.batch])
    ev = Eval(reader, batch, probes)
    t = time.perf_counter()
    pb = make_patch(reader, batch, cfg, name="batch", measure=False)
    result["batch"] = {"seconds": round(time.perf_counter() - t, 1), "steps": pb.metrics["steps"], **ev.measure([pb])}
    print("batch:", result["batch"], flush=True)

    result["sequential"] = []
    for n in args.seq:
        facts = facts_of(pool[:n])
        ev = Eval(reader, facts, probes)
        t = time.perf_counter()
        made = make_sequential(reader, facts, cfg, prefix="seq", measure=False)
        secs = time.perf_counter() - t
        row = {"patches": len(made), "seconds": round(secs, 1), **ev.measure(made)}
        result["sequential"].append(row)
        print("sequential:", row, flush=True)
    _write(f"weight_patches_report{args.tag}.json", result)


def _write(name, result):
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"written {OUT / name}", flush=True)


def main(argv=None):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="phase", required=True)
    c = sub.add_parser("calibrate")
    c.add_argument("--n", type=int, default=6)
    c.add_argument("--locality", type=int, default=30)
    c.add_argument("--grid", choices=sorted(GRIDS), default="small")
    r = sub.add_parser("report")
    r.add_argument("--layers", type=int, nargs="+", default=[0, 29])
    r.add_argument("--delta", type=float, default=1e-3)
    r.add_argument("--steps", type=int, default=25)
    r.add_argument("--lr", type=float, default=5e-3)
    r.add_argument("--locality-weight", type=float, default=0.0)
    r.add_argument("--batch", type=int, default=10)
    r.add_argument("--seq", type=int, nargs="*", default=[1, 10])
    r.add_argument("--locality", type=int, default=40)
    r.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    {"calibrate": calibrate, "report": report}[args.phase](args)


if __name__ == "__main__":
    sys.exit(main())
