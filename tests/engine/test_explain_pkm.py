"""What a plugged product-key memory did for an answer (issue 19): the slots it read most (summed
softmax weight over the answer's positions and heads) with their top tokens through the
unembedding, on a tiny layer where one slot is made to dominate; the record of a prediction
with the layer plugged, the answer without it, and the reader given back bit for bit."""
from __future__ import annotations

import pytest
import torch

from engine.reader.tiny import make_tiny_reader

PROMPT, ANSWER = "The chemical symbol of gold is", " Au and"
SLOT = 3 * 16 + 7  # row 3 of the first half's sub-keys, column 7 of the second's


@pytest.fixture
def tiny():
    return make_tiny_reader(seed=0)


def dominated(reader, token: int):
    """A 256-slot layer (2 heads, k=4) whose every query lands on ``SLOT`` with weight ~1, and
    whose value row there is the unembedding row of ``token`` (others small and random)."""
    from engine.mechanisms.pkm.config import PKMConfig
    from engine.mechanisms.pkm.mechanism import PKMMechanism
    from engine.mechanisms.pkm.module import ProductKeyMemory

    cfg = PKMConfig(layer=1, slots=256, k=4, heads=2, key_dim=16)
    mem = ProductKeyMemory(cfg, reader.hidden_size, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        mem.query.weight.zero_()  # the same query at every position: the normalised bias
        mem.query.bias.copy_(torch.randn(mem.query.bias.shape, generator=g))
        q = mem.query_norm(mem.query.bias[None])[0].view(2, 2, 8)  # [heads, half, key_dim/2]
        mem.keys[:, 0, SLOT // 16] = q[:, 0] * 50
        mem.keys[:, 1, SLOT % 16] = q[:, 1] * 50
        mem.values.weight.copy_(torch.randn(mem.values.weight.shape, generator=g) * 1e-3)
        mem.values.weight[SLOT] = reader.model.lm_head.weight[token].float() * 5
    mech = PKMMechanism(mem, 1, {})
    mech.folder = "/layers/gold.pkm"
    return mech


def test_the_dominant_slot_is_read_most_and_pushes_towards_its_token(tiny):
    from engine.explain.pkm import slots_read

    token = tiny.tokenizer(" Au", add_special_tokens=False)["input_ids"][0]
    mech = dominated(tiny, token)
    assert slots_read(tiny, PROMPT, ANSWER) == []  # nothing plugged: nothing read
    n_answer = len(tiny.tokenizer(ANSWER, add_special_tokens=False)["input_ids"])
    with mech.attach(tiny):
        got = slots_read(tiny, PROMPT, ANSWER, n=3)
    assert got[0].slot == SLOT
    # weight ~1 in each of the 2 heads at each answer position: the summed softmax weight
    assert got[0].weight == pytest.approx(2 * n_answer, rel=1e-3)
    assert all(s.weight < 1e-3 for s in got[1:])  # the others get (next to) nothing
    assert got[0].tokens[0] == tiny.tokenizer.decode([token]) and len(got[0].tokens) == 5


def test_a_prediction_with_the_layer_says_so_and_gives_the_answer_without_it(tiny):
    from engine.explain import Predictor
    from engine.explain.pkm import attached_layer
    from engine.explain.record import Explanation

    token = tiny.tokenizer(" Au", add_special_tokens=False)["input_ids"][0]
    mech = dominated(tiny, token)
    pred = Predictor(tiny)
    bare = pred.predict(PROMPT, mode="none", max_new_tokens=3)
    assert bare.pkm_layer is None and bare.pkm_slots == [] and "pkm" not in bare.mechanisms
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    with mech.attach(tiny):
        rec = pred.predict(PROMPT, mode="none", max_new_tokens=3)
        # the layer moves the answer (not the bare one, cached before it was plugged)
        assert rec.answer != bare.answer
        assert rec.pkm_layer == {"folder": "/layers/gold.pkm", "layer": 1, "slots": 256, "placement": "beside"}
        assert rec.mechanisms[0] == "pkm" and rec.pkm_slots[0].slot == SLOT
        without = pred.answers_without_pkm(PROMPT, mode="none", max_new_tokens=3)
        assert without == {"answer": bare.answer, "answer_without_memory": bare.answer}
        assert attached_layer(tiny) is not None  # plugged again after
    assert all(torch.equal(v, before[k]) for k, v in tiny.model.state_dict().items())
    rec.answers_without_pkm = without
    back = Explanation.from_dict(rec.to_dict())
    assert back.pkm_slots[0].slot == SLOT and back.pkm_slots[0].tokens == rec.pkm_slots[0].tokens
    assert back.answers_without_pkm == without
    html = rec.to_html()
    assert "Product-key memory:" in html and "Answer without the product-key memory" in html and f"<td>{SLOT}</td>" in html
