"""Left-padded batches of token rows and the answer's log-probability over them: what every
answer mode's leave-one-out scores with."""
from __future__ import annotations

from typing import Any, Sequence

import torch

def pad_left(reader, rows: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """Left-pad token rows: ``input_ids``, ``attention_mask``, ``position_ids`` ``[b, T]`` on the reader's device."""
    width = max(len(r) for r in rows)
    pad = int(reader.tokenizer.pad_token_id)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
            att[i, width - len(r):] = 1
    pos = (att.cumsum(-1) - 1).clamp(min=0)  # positions count real tokens only
    dev = reader.device
    return {"input_ids": ids.to(dev), "attention_mask": att.to(dev), "position_ids": pos.to(dev)}


def answer_logprob_rows(
    reader, prompt_rows: Sequence[Sequence[int]], answer_ids: Sequence[int], **forward_kw: Any
) -> tuple[torch.Tensor, Any]:
    """One batched forward of ``prompt_row + answer_ids`` per row.

    Returns the summed log-probability of the answer per row (float32 ``[n]`` on the
    CPU) and the model output (for attentions). The answer occupies the last
    ``len(answer_ids)`` positions of every row (left padding), so the last prompt
    token sits at position ``-(len(answer_ids) + 1)`` in every row.
    """
    la = len(answer_ids)
    batch = pad_left(reader, [list(p) + list(answer_ids) for p in prompt_rows])
    out = reader.model(**batch, use_cache=False, logits_to_keep=la + 1, **forward_kw)
    logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)  # [b, la, V]
    targets = batch["input_ids"][:, -la:]  # [b, la]
    sums = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).sum(-1)  # [b]
    return sums.float().cpu(), out
