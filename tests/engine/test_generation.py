"""Answers end at the end of their first sentence: the rule, and decoding that stops there."""
from __future__ import annotations

import re

import pytest
import torch

from engine.reader.generation import (PromptStates, answer_end, cut_answer, greedy_generate, propose, repeat_end,
                                      span_end)
from engine.reader.narrow import NarrowLinear, narrow_linears
from engine.reader.tiny import make_tiny_reader


@pytest.mark.parametrize("text, answer", [
    (" Tokyo. Japan is", " Tokyo."),
    (" Tokyo", " Tokyo"),  # still open: all of it
    (" Tokyo.", " Tokyo."),  # a full stop at the very end may be an abbreviation's: open
    (" St. John's. It is", " St. John's."),
    (" Mt. Everest! Yes", " Mt. Everest!"),
    (" J. J. Thomson. He", " J. J. Thomson."),
    (" the U.S. dollar. Its", " the U.S. dollar."),
    (" 1.008 grams. It", " 1.008 grams."),
    (" +385. The", " +385."),
    (" Paris\nQuestion: what", " Paris"),
    ("\n\nParis\nMore", "\n\nParis"),  # leading line breaks are skipped, as the app does
    (" Is it? Yes", " Is it?"),
    ("", ""),
])
def test_an_answer_is_its_first_sentence(text, answer):
    assert cut_answer(text) == answer
    assert (answer_end(text) is None) == (answer == text)


@pytest.mark.parametrize("text, answer", [
    (" France, in France, in France.", " France"),  # the run-on of issue 20
    (" Kenyan shilling (KES), Kenyan shilling", " Kenyan shilling (KES)"),
    (" +1 246 +1 246", " +1 246"),
    (" rw.rw.rw", " rw"),
    (' "X" and "X" and', ' "X"'),
    (" Bora Bora.", " Bora Bora."),  # one word twice is no repetition
    (" a city in France. France", " a city in France."),
    (" France in Fr", " France in Fr"),  # a word still being decoded: nothing to cut
])
def test_an_answer_that_repeats_itself_stops_before_the_repetition(text, answer):
    assert cut_answer(text) == answer


def _repeats_a_word_pair(text: str) -> bool:
    words = re.findall(r"\w+", text.lower())
    pairs = list(zip(words, words[1:]))
    return len(set(pairs)) < len(pairs)


def test_decoding_stops_a_continuation_that_repeats_itself():
    """The tiny reader's continuation of "Gold" loops (" ... unwitting senator senator senator"):
    the answer stops before the loop, the same text whether decoding stops there or runs on."""
    reader = make_tiny_reader(seed=0)
    full = reader.generate("Gold", max_new_tokens=24, stop_at_answer_end=False)
    assert _repeats_a_word_pair(full) and answer_end(full) is None
    cut = reader.generate("Gold", max_new_tokens=24)
    assert full.startswith(cut) and len(cut) < len(full)
    assert not _repeats_a_word_pair(cut) and cut.endswith(" senator")
    assert repeat_end(full) == len(cut) and cut_answer(full) == cut


def test_stopping_keeps_each_rows_text_as_without_stopping_up_to_the_answers_end():
    """Stopping early changes nothing before the end; rows stop on their own (batch-independent)."""
    reader = make_tiny_reader(seed=2)  # its random continuation of "Gold" has a sentence end
    prompts = ["The capital of Japan is", "Gold", "Hi there. Then", "Water boils at"]
    batch = reader.encode_batch(prompts)
    full = greedy_generate(reader, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           max_new_tokens=24, stop_at_answer_end=False)
    cut = greedy_generate(reader, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          max_new_tokens=24)
    assert cut == [cut_answer(t) for t in full]
    assert any(c != f for c, f in zip(cut, full))  # some row did stop early
    alone = [reader.generate(p, max_new_tokens=24) for p in prompts]
    assert alone == cut
    # The training job reads the reader's own answers uncut, as the shipped branch was trained.
    assert reader.generate(prompts, max_new_tokens=24, stop_at_answer_end=False) == full
    with torch.no_grad():
        embeds = reader.model.get_input_embeddings()(batch["input_ids"])
    assert greedy_generate(reader, inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                           max_new_tokens=24) == cut
    with pytest.raises(ValueError, match="exactly one"):
        greedy_generate(reader, attention_mask=batch["attention_mask"], max_new_tokens=2)


# ----------------------------------------------------------------- the span stop (issue 20)

AL_AIN = ["Al Ain International Airport is in the city of Al Ain.",
          "Al Ain International Airport is in the United Arab Emirates."]
DC = ["The capital of the United States is Washington, D.C.", "Y lies in Washington."]


@pytest.mark.parametrize("text, entries, answer", [
    (" Al Ain, the city of Al Ain", AL_AIN, " Al Ain"),  # issue 20's run-on: cut where the entry ends
    (" Al Ain. It is", AL_AIN, " Al Ain."),  # the entry's own full stop is kept
    (" Al Ain", AL_AIN, " Al Ain"),  # still open
    (" the United Arab Emirates, a", AL_AIN, " the United Arab Emirates"),
    (" Washington, D.C. It is the", DC, " Washington, D.C."),  # the abbreviation's dot is the entry's end
    (" Washington, D.C, the", DC, " Washington, D.C"),
    (" Washington, D", DC, " Washington, D"),  # a shorter entry ("… in Washington.") does not cut it
    (" Washington state", DC[:1], " Washington state"),  # left the entry mid-sentence: no span stop
    (" Washington state", DC, " Washington"),  # ... but "Y lies in Washington." ends right there
    (" Paris is nice", AL_AIN, " Paris is nice"),  # copies no entry: the other stops only
    (" .ke. Kenya", ["The top-level domain of Kenya is .ke."], " .ke."),  # objects that start with punctuation
    (" .kere", ["The top-level domain of Kenya is .ke."], " .kere"),  # (a word going on is not cut)
    (" +254 (Kenya)", ["The calling code of Kenya is +254."], " +254"),
])
def test_an_answer_copied_from_an_entry_stops_at_the_entrys_sentence_end(text, entries, answer):
    assert cut_answer(text, entries) == answer
    assert cut_answer(text, []) == cut_answer(text)  # without entries the rule is as before


def test_the_span_stop_never_cuts_inside_the_copied_object():
    """Every prefix of a multi-word object copied from its entry is left open (no stop), so
    decoding goes on to the whole object, whatever shorter entries are retrieved beside it."""
    entries = ["Y lies in Al.", "Z is in Washington.", *AL_AIN, *DC]
    for obj in ("Al Ain", "Washington, D.C"):
        for n in range(1, len(obj) + 1):
            assert span_end(" " + obj[:n], entries) is None, obj[:n]


def test_decoding_stops_where_the_copied_entry_ends():
    """The tiny reader continues "Gold" with " penc Alaska masterpiece Explore receipt …": with
    an entry that holds its first three words as a sentence's end, decoding stops after them
    (and not after " penc", the end of a shorter entry); a row without entries runs on."""
    reader = make_tiny_reader(seed=0)
    full = reader.generate("Gold", max_new_tokens=12, stop_at_answer_end=False)
    assert full.startswith(" penc Alaska masterpiece Explore")
    entries = ["Y lies in penc.", "Gold is found in penc Alaska masterpiece."]
    batch = reader.encode_batch(["Gold", "Gold"])
    fw = Forwards(reader.model)
    try:
        got = greedy_generate(reader, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              max_new_tokens=12, spans=[entries, []])
    finally:
        fw.close()
    assert got == [" penc Alaska masterpiece", cut_answer(full)]
    # The entry's end (no punctuation) is a sentence end too; the answer stops as soon as it reaches it.
    alone = reader.generate("Gold", max_new_tokens=12, spans=[["Gold: penc Alaska masterpiece Explore"]])
    assert alone == " penc Alaska masterpiece Explore"
    with pytest.raises(ValueError, match="spans has 1 rows"):
        greedy_generate(reader, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        max_new_tokens=2, spans=[entries])


# ----------------------------------------------------------------- draft verification


def greedy_ids(reader, prompt: str, n: int) -> list[int]:
    """The reference: n greedy tokens without cache or drafts."""
    ids = reader.tokenizer(prompt, return_tensors="pt")["input_ids"]
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(reader.model(input_ids=ids).logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


class Forwards:
    """Counts the reader's forward passes (prefill + decoding steps)."""

    def __init__(self, module) -> None:
        self.n = 0
        self._h = module.register_forward_pre_hook(self._count)

    def _count(self, *_args) -> None:
        self.n += 1

    def close(self) -> None:
        self._h.remove()


def run(reader, prompts, n, **kw):
    batch = reader.encode_batch(prompts)
    fw = Forwards(reader.model)
    try:
        texts = greedy_generate(reader, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                max_new_tokens=n, stop_at_answer_end=False, **kw)
    finally:
        fw.close()
    return texts, fw.n


def test_propose_copies_what_followed_the_longest_recent_match():
    assert propose([5, 6, 7], [[1, 6, 7, 8, 9, 10], [7, 3]], 2) == [8, 9]  # 2-gram (6, 7) beats 1-gram (7,)
    assert propose([5, 6, 7], [[7, 3, 4]], 5) == [3, 4]  # 1-gram, cut at the source's end
    assert propose([1, 2, 9, 1, 2], [], 3) == [9, 1]  # the row's own earlier tokens ("prompt lookup")
    assert propose([1, 2, 9, 4, 2], [], 3) == []  # ... from two tokens on
    assert propose([1, 2, 3], [[4, 5]], 3) == []  # nothing matches
    assert propose([1, 2, 3], [[2, 3, 4]], 0) == []


def test_drafts_the_model_agrees_with_save_steps_and_never_change_the_text():
    reader = make_tiny_reader(seed=2)
    prompt = "The capital of Japan is"
    truth = greedy_ids(reader, prompt, 12)
    plain, steps_plain = run(reader, [prompt], 12)
    assert plain == [reader.tokenizer.decode(truth, skip_special_tokens=True)]
    assert steps_plain == 12  # prefill + 11 one-token steps: nothing in the prompt to copy
    # An entry holding the very continuation: each step checks up to 4 drafts at once.
    entry = reader.tokenizer(prompt)["input_ids"][-2:] + truth
    copied, steps_copied = run(reader, [prompt], 12, lookup=[[entry]])
    assert copied == plain and steps_copied <= 4
    # Drafts the model disagrees with are dropped: same text, no more steps than plain decoding.
    junk = reader.tokenizer(prompt)["input_ids"][-2:] + [t + 1 for t in truth]
    wrong, steps_wrong = run(reader, [prompt], 12, lookup=[[junk]])
    assert wrong == plain and steps_wrong == steps_plain


def test_rows_accept_their_own_drafts_and_match_the_rows_decoded_alone():
    reader = make_tiny_reader(seed=2)
    prompts = ["The capital of Japan is", "Water boils at a temperature of", "Gold"]
    alone = [run(reader, [p], 10)[0][0] for p in prompts]
    good = [reader.tokenizer(p)["input_ids"][-1:] + greedy_ids(reader, p, 10) for p in prompts]
    junk = reader.tokenizer(prompts[1])["input_ids"][-1:] + [7, 8, 9, 10, 11, 12]
    # Each row keeps the drafts it agrees with, however many its neighbours keep.
    texts, steps = run(reader, prompts[:2], 10, lookup=[[good[0]], [good[1]]])
    assert texts == alone[:2] and steps <= 5
    texts, steps = run(reader, prompts, 10, lookup=[[good[0]], [junk], []])
    assert texts == alone and steps == 10  # the rows without useful drafts go one token per step
    with pytest.raises(ValueError, match="lookup has 1 rows"):
        run(reader, prompts, 4, lookup=[[good]])


def test_asked_again_a_prompt_skips_the_layers_below_and_answers_the_same():
    reader = make_tiny_reader(seed=2)
    prompts = ["The capital of Japan is", "Gold"]
    plain = run(reader, prompts, 8)[0]
    states = PromptStates(first=1)
    layer0 = Forwards(reader.layers[0])
    try:
        assert run(reader, prompts, 8, prompt_states=states)[0] == plain
        first_time, layer0.n = layer0.n, 0
        assert len(states) == 2
        # Asked again, in the other order (other padding): layer 0 runs only for the new tokens.
        assert run(reader, prompts[::-1], 8, prompt_states=states)[0] == plain[::-1]
        assert layer0.n == first_time - 1
        # A prompt it has not seen runs in full, with the known one beside it.
        layer0.n = 0
        assert run(reader, [prompts[0], "Silver"], 8, prompt_states=states)[0] == [plain[0], run(reader, ["Silver"], 8)[0][0]]
        assert len(states) == 3
    finally:
        layer0.close()
    with pytest.raises(ValueError, match="first"):
        PromptStates(first=0)


def test_few_row_products_equal_the_plain_linear_and_keep_gradients():
    torch.manual_seed(0)
    plain = torch.nn.Linear(48, 80)
    fast = torch.nn.Linear(48, 80)
    fast.load_state_dict(plain.state_dict())
    assert narrow_linears(torch.nn.Sequential(fast)) == 1 and isinstance(fast, NarrowLinear)
    assert fast.state_dict().keys() == plain.state_dict().keys()
    for shape in [(1, 48), (2, 3, 48), (1, 5, 48), (40, 48), (2, 0, 48)]:
        x = torch.randn(*shape)
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)
    x = torch.randn(3, 48, requires_grad=True)
    fast(x).sum().backward()
    g = x.grad.clone()
    x.grad = None
    plain(x).sum().backward()
    torch.testing.assert_close(g, x.grad)
    reader = make_tiny_reader(seed=0)
    assert all(type(m) is not torch.nn.Linear for m in reader.model.modules())  # the reader's are switched
