"""Product-key memory on the real reader (SmolLM2-135M): perplexity, usage, the seed paper's ablation.

    .venv/bin/python bench/bench_pkm.py [--domain geography] [--slots 16384] [--steps 40]
        [--ablation-steps 15] [--batch 4] [--seq-len 64] [--heldout-tokens 2048] [--append]

* The demo domain's facts (``resources/demo/<domain>/facts.jsonl``) are split by document
  (one document per entity) exactly as ``plugmem pkm grow`` splits them (20 % of the
  entities held out, seeded hash of the name); no held-out entity's sentence is trained on.
* Exactness: the held-out logits of the full reader with a zero-started layer plugged in
  equal the bare reader's (``torch.equal``).
* Inference overhead at the standard size (65,536 slots): one full forward pass of a prompt
  with and without the layer, interleaved, median of repeats.
* The headline run: beside the FFN, zero start, ``--steps`` steps; held-out perplexity of the
  domain with / without, general text (the project's own docs: not of the domain) with /
  without (forgetting), memory usage on the held-out part.
* The ablation at equal compute (``--ablation-steps`` steps, the same batches): beside vs
  replacing the FFN x zero vs random start, and a control that trains no memory: LoRA
  (rank 16) on the same layer's three FFN projections.
The training loop is the job's (``engine.mechanisms.pkm.train``): the same windows, cached
lower states, optimisers (values Adam 1e-3, the rest 1e-4) and loss; the bench only shares
one cache between the runs. Sized for a 2-core CPU: the defaults are far below the issue's
30-minute standard run; ``--slots 65536 --steps 2000 --batch 8 --seq-len 128`` on a free
machine or a GPU is that run.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench._results import publish  # noqa: E402
from engine.mechanisms.pkm.attach import attach  # noqa: E402
from engine.mechanisms.pkm.config import PKMConfig  # noqa: E402
from engine.mechanisms.pkm.corpus import Corpus, load_corpus, loss_mask, windows  # noqa: E402
from engine.mechanisms.pkm.module import ProductKeyMemory  # noqa: E402
from engine.mechanisms.pkm.train import heldout_nll, lower_states, memory_usage, window_nll  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class LoRA(torch.nn.Module):
    """Low-rank updates (B A x, B zero at start) on the FFN projections of one layer (the control)."""

    def __init__(self, mlp: torch.nn.Module, rank: int = 16, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.names = ["gate_proj", "up_proj", "down_proj"]
        self.a = torch.nn.ParameterList()
        self.b = torch.nn.ParameterList()
        for n in self.names:
            lin = getattr(mlp, n)
            self.a.append(torch.nn.Parameter(torch.randn(rank, lin.in_features, generator=gen) / math.sqrt(lin.in_features)))
            self.b.append(torch.nn.Parameter(torch.zeros(lin.out_features, rank)))
        self.handles = [getattr(mlp, n).register_forward_hook(self._hook(i)) for i, n in enumerate(self.names)]

    def _hook(self, i):
        return lambda m, inp, out: out + (inp[0] @ self.a[i].T) @ self.b[i].T

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def optimisers(groups):
    return [cls(params, lr=lr) for cls, params, lr in groups]


def train(reader, layer, train_h, train_w, opts, start, stop, batch, micro, seed=0):
    """The job's steps ``start..stop-1`` (its seeded sampling, micro-batches and loss) with ``opts``."""
    mask = loss_mask(train_w)
    n = train_w.ids.shape[0]
    losses = []
    t0 = time.perf_counter()
    for step in range(start, stop):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        rows = torch.randint(n, (batch,), generator=gen)
        for o in opts:
            o.zero_grad(set_to_none=True)
        tokens = int(mask[rows, 1:].sum())
        total = 0.0
        for a in range(0, batch, micro):
            r = rows[a:a + micro]
            nll, _ = window_nll(reader, layer, train_h[r], train_w.ids[r], mask[r])
            (nll / tokens).backward()
            total += float(nll.detach())
        for o in opts:
            o.step()
        losses.append(total / tokens)
        if len(losses) % 5 == 0:
            log(f"  step {step + 1}/{stop} loss {sum(losses[-5:]) / 5:.4f} ({(time.perf_counter() - t0) / len(losses):.1f} s/step)")
    return losses, time.perf_counter() - t0


def pkm_groups(mem: ProductKeyMemory):
    return [(torch.optim.Adam, mem.value_parameters(), 1e-3), (torch.optim.Adam, mem.other_parameters(), 1e-4)]


def general_corpus() -> Corpus:
    """Text not of the domain: the project's prose docs (threat model, scale notes), a document each."""
    return load_corpus([ROOT / "docs" / "THREAT_MODEL.md", ROOT / "docs" / "SCALE.md"])


def overhead(reader, layer, ids, repeats):
    """Bare vs plugged (65,536 slots, random values) full forward passes of a 64-token prompt and of
    one token, interleaved; medians of wall time and of the process's CPU time (all threads): on a
    machine shared with other jobs the CPU time is the steadier of the two."""
    std = ProductKeyMemory(PKMConfig(layer=layer, slots=65_536, init="random"), reader.hidden_size, seed=0).eval()
    res = {}
    for name, x, n in (("64-token prompt", ids[:1, :64], repeats), ("one token", ids[:1, :1], repeats * 3)):
        times = {"bare": [], "pkm": []}
        with torch.no_grad():
            for _ in range(2):
                reader.model(input_ids=x)
            for _ in range(n):
                for which in ("bare", "pkm"):
                    att = attach(reader, std, layer) if which == "pkm" else None
                    w0, c0 = time.perf_counter(), time.process_time()
                    reader.model(input_ids=x)
                    times[which].append((time.perf_counter() - w0, time.process_time() - c0))
                    if att is not None:
                        att.detach()
        med = {k: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for k, v in times.items()}
        res[name] = {"bare_ms": med["bare"][0] * 1e3, "pkm_ms": med["pkm"][0] * 1e3,
                     "bare_cpu_ms": med["bare"][1] * 1e3, "pkm_cpu_ms": med["pkm"][1] * 1e3,
                     "wall_ratio": med["pkm"][0] / med["bare"][0], "cpu_ratio": med["pkm"][1] / med["bare"][1], "n": n}
    return res


def step_times(reader, layer, train_w, args, repeats: int = 2) -> str:
    """Seconds per step of the grow job's defaults (batch 8 of 128-token windows, micro-batches of 2,
    dense Adam on the values) at 16k and 65k slots: what the app's time estimate says."""
    ids = train_w.ids.reshape(-1)[: 8 * 128]
    if ids.numel() < 8 * 128:
        raise SystemExit("--step-time needs at least 1,024 training tokens (raise --steps or --batch)")
    from engine.mechanisms.pkm.corpus import Windows

    w = Windows(ids.view(8, 128), 8 * 128)
    h = lower_states(reader, layer, w.ids)
    rows = [f"### bench_pkm.py --step-time — {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} (torch "
            f"{torch.__version__}, {args.threads} threads; machine shared, load average ~{os.getloadavg()[0]:.0f})", "",
            "| slots | s per step (8 x 128 tokens) | of which the optimisers' step |", "|---|---|---|"]
    for slots in (16_384, 65_536):
        mem = ProductKeyMemory(PKMConfig(layer=layer, slots=slots), reader.hidden_size, seed=0)
        opts = optimisers(pkm_groups(mem))
        totals, opt_s = [], []
        with attach(reader, mem, layer):
            mem.train()
            for rep in range(repeats):
                t = time.perf_counter()
                train(reader, layer, h, w, opts, rep, rep + 1, 8, 2)
                totals.append(time.perf_counter() - t)
                t = time.perf_counter()
                for o in opts:
                    o.step()
                opt_s.append(time.perf_counter() - t)
        log(f"{slots}: {totals} s per step")
        rows.append(f"| {slots:,} | {statistics.median(totals):.1f} | {statistics.median(opt_s):.2f} |")
    return "\n".join(rows)


def overhead_lines(over, args) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = [f"### bench_pkm.py --overhead-only — {when} (torch {torch.__version__}, {args.threads} threads; machine "
            f"shared, load average ~{os.getloadavg()[0]:.0f})", "",
            "| forward pass | bare wall ms | + PKM 65k wall ms | wall ratio | bare CPU ms | + PKM CPU ms | CPU ratio | n |",
            "|---|---|---|---|---|---|---|---|"]
    for k, v in over.items():
        rows.append(f"| {k} | {v['bare_ms']:.1f} | {v['pkm_ms']:.1f} | x{v['wall_ratio']:.3f} | {v['bare_cpu_ms']:.1f} | "
                    f"{v['pkm_cpu_ms']:.1f} | x{v['cpu_ratio']:.3f} | {v['n']} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--domain", default="geography")
    ap.add_argument("--slots", type=int, default=16_384)
    ap.add_argument("--layer", type=int, default=-1)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--ablation-steps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--heldout-tokens", type=int, default=2048)
    ap.add_argument("--general-tokens", type=int, default=1024)
    ap.add_argument("--overhead-repeats", type=int, default=7)
    ap.add_argument("--skip-ablation", action="store_true")
    ap.add_argument("--overhead-only", action="store_true", help="only the inference overhead at 65k slots")
    ap.add_argument("--step-time", action="store_true",
                    help="only the time of the job's default training step (8 x 128 tokens) at 16k and 65k slots")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--append", action="store_true", help="append the results to bench/RESULTS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()

    from engine.reader import load_reader

    reader = load_reader(None, "cpu")
    cfg0 = PKMConfig(layer=args.layer, slots=args.slots)
    layer = cfg0.resolved_layer(reader.num_layers)
    log(f"{reader}; memory at layer {layer}")

    corpus = load_corpus([ROOT / "resources" / "demo" / args.domain / "facts.jsonl"])
    train_names, held_names = corpus.split(0.2, 0)
    import hashlib

    spread = sorted(train_names, key=lambda s: hashlib.sha256(s.encode()).hexdigest())  # a capped prefix spans A-Z
    need = args.steps * args.batch * args.seq_len
    train_w = windows(reader.tokenizer, corpus, spread, args.seq_len, need)
    held_w = windows(reader.tokenizer, corpus, held_names, args.seq_len, args.heldout_tokens)
    gen_w = windows(reader.tokenizer, general_corpus(), sorted(general_corpus().documents), args.seq_len,
                    args.general_tokens)
    log(f"{len(corpus.documents)} documents: {len(train_names)} train, {len(held_names)} held out; "
        f"tokens: train {train_w.tokens:,} (one pass of {args.steps} steps), held-out {held_w.tokens:,}, "
        f"general {gen_w.tokens:,}")
    if args.step_time:
        publish(step_times(reader, layer, train_w, args) + "\n", args.append)
        return
    if args.overhead_only:
        over = overhead(reader, layer, held_w.ids, args.overhead_repeats)
        publish(overhead_lines(over, args) + "\n", args.append)
        return
    t = time.perf_counter()
    train_h = lower_states(reader, layer, train_w.ids)
    held_h = lower_states(reader, layer, held_w.ids)
    gen_h = lower_states(reader, layer, gen_w.ids)
    cache_s = time.perf_counter() - t
    log(f"cached the states below layer {layer} in {cache_s:.0f} s")

    # ---- exactness: the full reader with a zero-started layer plugged in
    zero = ProductKeyMemory(PKMConfig(layer=layer, slots=args.slots), reader.hidden_size, seed=0)
    ids = held_w.ids[:2]
    with torch.no_grad():
        bare = reader.model(input_ids=ids).logits
        with attach(reader, zero, layer):
            plugged = reader.model(input_ids=ids).logits
        after = reader.model(input_ids=ids).logits
    exact = bool(torch.equal(bare, plugged)) and bool(torch.equal(bare, after))
    ppl_bare = math.exp(heldout_nll(reader, layer, held_h, held_w))
    gen_bare = math.exp(heldout_nll(reader, layer, gen_h, gen_w))
    log(f"zero layer leaves the logits equal: {exact}; held-out ppl {ppl_bare:.3f}, general {gen_bare:.3f}")

    # ---- inference overhead at 65k slots: full forward passes, wall and process CPU time
    over = overhead(reader, layer, held_w.ids, args.overhead_repeats)
    log("overhead at 65k: " + "; ".join(f"{k}: wall x{v['wall_ratio']:.3f}, CPU x{v['cpu_ratio']:.3f}"
                                         for k, v in over.items()))

    def evaluate(mem, placement, label):
        nll, counter = memory_usage(reader, mem, layer, held_h, held_w, placement)
        with torch.no_grad(), attach(reader, mem, layer, placement):
            gen = math.exp(heldout_nll(reader, layer, gen_h, gen_w))
        u = counter.report()
        row = {"label": label, "ppl": math.exp(nll), "general": gen, "usage": u}
        log(f"{label}: held-out ppl {row['ppl']:.3f} (bare {ppl_bare:.3f}), general {gen:.3f}, used {u.used:.3f}, "
            f"KL {u.kl_weights:.3f}")
        return row

    rows = []
    # ---- the headline run (beside, zero start), evaluated at the ablation's step count too
    log(f"headline: beside the FFN, zero start, {args.steps} steps")
    mem = ProductKeyMemory(PKMConfig(layer=layer, slots=args.slots), reader.hidden_size, seed=0)
    opts = optimisers(pkm_groups(mem))
    at_equal = {}
    losses, secs = [], 0.0
    for a, b in ((0, min(args.ablation_steps, args.steps)), (min(args.ablation_steps, args.steps), args.steps)):
        if b > a:
            with attach(reader, mem, layer):
                mem.train()
                part, s = train(reader, layer, train_h, train_w, opts, a, b, args.batch, args.micro_batch)
            mem.eval()
            losses, secs = losses + part, secs + s
        if b == args.ablation_steps and b < args.steps:
            at_equal["row"] = evaluate(mem, "beside", f"beside, zero start ({b} steps)")
            at_equal["row"]["seconds"] = secs
    head = evaluate(mem, "beside", f"beside, zero start ({args.steps} steps)")
    head["seconds"], head["losses"] = secs, losses
    if args.ablation_steps == args.steps:
        at_equal["row"] = head

    if not args.skip_ablation:
        if "row" in at_equal:
            rows.append(at_equal["row"])
        for placement, init in (("beside", "random"), ("replace", "zero"), ("replace", "random")):
            if (placement, init) == ("beside", "zero"):
                continue
            log(f"ablation: {placement}, {init} start, {args.ablation_steps} steps")
            m = ProductKeyMemory(PKMConfig(layer=layer, slots=args.slots, placement=placement, init=init),
                                 reader.hidden_size, seed=0)
            start = evaluate(m.eval(), placement, f"{placement}, {init} start (step 0)")
            with attach(reader, m, layer, placement):
                m.train()
                _, s = train(reader, layer, train_h, train_w, optimisers(pkm_groups(m)), 0, args.ablation_steps,
                             args.batch, args.micro_batch)
            m.eval()
            row = evaluate(m, placement, f"{placement}, {init} start ({args.ablation_steps} steps)")
            row["start_ppl"], row["seconds"] = start["ppl"], s
            rows.append(row)
        log(f"control: LoRA rank 16 on layer {layer}'s FFN, {args.ablation_steps} steps")
        lora = LoRA(reader.layers[layer].mlp)
        _, s = train(reader, layer, train_h, train_w, optimisers([(torch.optim.Adam, list(lora.parameters()), 1e-3)]),
                     0, args.ablation_steps, args.batch, args.micro_batch)
        with torch.no_grad():
            lora_ppl = math.exp(heldout_nll(reader, layer, held_h, held_w))
            lora_gen = math.exp(heldout_nll(reader, layer, gen_h, gen_w))
        lora.remove()
        lora_params = sum(p.numel() for p in lora.parameters())
        log(f"LoRA: held-out ppl {lora_ppl:.3f}, general {lora_gen:.3f}")

    # ---- report
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    gain = 1 - head["ppl"] / ppl_bare
    u = head["usage"]
    lines = [
        f"## bench_pkm.py — {when} (torch {torch.__version__}, {args.threads} threads, {platform.machine()})",
        "",
        "Machine: the 2-core development machine, shared with other engineers' jobs while this ran (load average "
        f"~{os.getloadavg()[0]:.0f}): every time is an upper bound. Reader SmolLM2-135M-Instruct (CPU, float32), "
        f"memory at layer {layer} of {reader.num_layers}, {args.slots:,} slots, 4 heads, k = 32, key dim 256; "
        f"domain `{args.domain}`: {len(corpus.documents)} entity documents, {len(held_names)} held out by document "
        f"(seeded hash, as `plugmem pkm grow`); trained on {train_w.tokens:,} tokens of the other documents, "
        f"windows of {args.seq_len}, batch {args.batch}; values Adam 1e-3, query/keys Adam 1e-4 (XLM's recipe, not "
        f"tuned here). Held-out: {held_w.tokens:,} tokens; general text (docs/THREAT_MODEL.md, docs/SCALE.md): "
        f"{gen_w.tokens:,} tokens. Lower-layer cache: {cache_s:.0f} s.",
        "",
        f"* Zero-started layer plugged in: logits equal to the bare reader's (torch.equal): **{exact}**.",
        f"* Headline ({args.steps} steps, {head['seconds']:.0f} s): held-out perplexity **{ppl_bare:.3f} -> "
        f"{head['ppl']:.3f}** ({gain:+.1%} gain; target >= 10 % with the standard size in 30 min); general text "
        f"{gen_bare:.3f} -> {head['general']:.3f} ({head['general'] / gen_bare - 1:+.2%}). Training loss "
        f"{sum(head['losses'][:5]) / 5:.3f} (first 5 steps) -> {sum(head['losses'][-5:]) / 5:.3f} (last 5).",
        f"* Memory usage on the held-out part ({u.tokens:,} tokens): slots used {u.used:.1%} (target >= 80 %), "
        f"top-1 used {u.top1_used:.1%}, KL(weights || uniform) {u.kl_weights:.3f}, KL(counts || uniform) "
        f"{u.kl_counts:.3f} nats (log slots = {math.log(args.slots):.2f}), Gini {u.gini:.3f}, slots holding "
        f"50/90/99 % of the weight {u.slots_50:,} / {u.slots_90:,} / {u.slots_99:,}.",
        "* Inference overhead at 65,536 slots (random values; full forward passes, interleaved, medians): "
        + "; ".join(f"{k} {v['bare_ms']:.0f} -> {v['pkm_ms']:.0f} ms wall (x{v['wall_ratio']:.3f}), CPU x{v['cpu_ratio']:.3f}"
                    for k, v in over.items()) + " (target <= x1.10).",
    ]
    if not args.skip_ablation:
        lines += ["", f"Ablation at equal compute ({args.ablation_steps} steps each, the same batches; bare reader: "
                      f"held-out {ppl_bare:.3f}, general {gen_bare:.3f}):", "",
                  "| run | held-out ppl at step 0 | held-out ppl | general ppl | slots used | KL weights | Gini | s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            uu = r["usage"]
            lines.append(f"| {r['label']} | {r.get('start_ppl', ppl_bare):.3f} | {r['ppl']:.3f} | {r['general']:.3f} | "
                         f"{uu.used:.1%} | {uu.kl_weights:.3f} | {uu.gini:.3f} | {r.get('seconds', float('nan')):.0f} |")
        lines.append(f"| control: LoRA r16 on layer {layer}'s FFN ({lora_params:,} params, no memory) | {ppl_bare:.3f} | "
                     f"{lora_ppl:.3f} | {lora_gen:.3f} | – | – | – | {s:.0f} |")
    lines += ["", f"Whole bench: {time.perf_counter() - t_all:.0f} s."]
    publish("\n".join(lines) + "\n", args.append)


if __name__ == "__main__":
    main()
