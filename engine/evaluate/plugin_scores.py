"""Teacher-forced scores of probe answers with and without a knowledge plugin, and a sign test.

One forward per batch gives, for each probe, the summed log p of the gold answer's
tokens, the rank of its first token among the vocabulary, and whether greedy decoding
would produce exactly those tokens (the argmax at every answer position is the gold
token). That last figure is the probe rule of :func:`engine.probe_files.is_correct`
for the answer's own tokenization, without generating: a strict lower bound of it
(another tokenization of the same text, or a different case, does not count).

Small gains show in log p and rank long before they flip a greedy answer, so the
evaluation of the plugins reports all three (issue 21).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch


@dataclass
class AnswerScore:
    logp: float  # summed log p of the answer tokens
    rank: int  # rank of the first answer token (0 = the reader's top choice)
    greedy: bool  # greedy decoding gives exactly the answer tokens
    tokens: int
    top1: int = -1  # the reader's top token where the answer begins (whatever it is)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def answer_text(answer: str) -> str:
    """The answer as the reader would continue the prompt: one leading space."""
    return " " + answer.strip()


@torch.no_grad()
def score_answers(injector, prompts: Sequence[str], answers: Sequence[str], *, enabled: bool = True,
                  batch_size: int = 16) -> list[AnswerScore]:
    """:class:`AnswerScore` of each (prompt, answer) pair; ``enabled=False``: the bare reader.

    ``injector`` is a :class:`~engine.mechanisms.plugins.attach.PluginInjector` (or anything
    with its ``build`` / ``reader`` / ``_answer_ids``).
    """
    if len(prompts) != len(answers):
        raise ValueError(f"score_answers: {len(prompts)} prompts but {len(answers)} answers")
    reader = injector.reader
    a_ids = injector._answer_ids([answer_text(a) for a in answers])
    out: list[AnswerScore] = []
    for s in range(0, len(prompts), batch_size):
        ids = a_ids[s:s + batch_size]
        batch = injector.build(list(prompts[s:s + batch_size]), ids, enabled=enabled)
        b = batch.inputs
        h = reader.model.model(**b.model_kwargs(), use_cache=False).last_hidden_state  # [b, W, d]
        rows, cols, tgt = [], [], []
        for i, (plen, ans) in enumerate(zip(batch.prompt_lens, ids)):
            for j, t in enumerate(ans):
                rows.append(i)
                cols.append(int(b.token_col[i, plen + j]) - 1)  # the position predicting answer token j
                tgt.append(t)
        dev = h.device
        logits = reader.model.lm_head(h[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)]).float()
        logp = torch.log_softmax(logits, -1)  # [n_tok, V]
        t = torch.tensor(tgt, device=dev)
        tok_lp = logp.gather(-1, t[:, None]).squeeze(-1).cpu()  # [n_tok]
        arg = logits.argmax(-1).cpu()  # [n_tok]
        top = arg == t.cpu()
        rank = (logits > logits.gather(-1, t[:, None])).sum(-1).cpu()  # [n_tok]
        k = 0
        for ans in ids:
            n = len(ans)
            out.append(AnswerScore(float(tok_lp[k:k + n].sum()), int(rank[k]), bool(top[k:k + n].all()), n,
                                   int(arg[k])))
            k += n
    return out


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test p-value (ties left out): P(|W - n/2| >= |wins - n/2|) under p = 1/2."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def compare(base: Sequence[AnswerScore], new: Sequence[AnswerScore], eps: float = 1e-4) -> dict[str, Any]:
    """Paired comparison of two conditions on the same probes: accuracy, log p, rank, sign tests."""
    n = len(base)
    if n != len(new):
        raise ValueError(f"compare: {n} and {len(new)} scores")
    if n == 0:
        return {"n": 0}
    d = [b.logp for b in base], [x.logp for x in new]
    up = sum(1 for a, b in zip(*d) if b > a + eps)
    down = sum(1 for a, b in zip(*d) if b < a - eps)
    won = sum(1 for a, b in zip(base, new) if b.greedy and not a.greedy)
    lost = sum(1 for a, b in zip(base, new) if a.greedy and not b.greedy)
    deltas = sorted(b - a for a, b in zip(*d))
    return {
        "n": n,
        "acc_base": round(sum(x.greedy for x in base) / n, 4), "acc_new": round(sum(x.greedy for x in new) / n, 4),
        "won": won, "lost": lost, "p_acc": sign_test(won, lost),
        "mean_logp_base": round(sum(d[0]) / n, 4), "mean_logp_new": round(sum(d[1]) / n, 4),
        "mean_delta_logp": round(sum(deltas) / n, 4), "median_delta_logp": round(deltas[n // 2], 4),
        "logp_up": up, "logp_down": down, "p_logp": sign_test(up, down),
        "mrr_base": round(sum(1 / (1 + x.rank) for x in base) / n, 4),
        "mrr_new": round(sum(1 / (1 + x.rank) for x in new) / n, 4),
        "top1_changes": sum(1 for a, b in zip(base, new) if a.top1 != b.top1),
    }
