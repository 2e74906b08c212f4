"""Answers end at the end of their first sentence: the rule, and decoding that stops there."""
from __future__ import annotations

import pytest
import torch

from engine.models.generation import answer_end, cut_answer, greedy_generate
from engine.models.tiny import make_tiny_reader


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
