"""The word tokenizer: splitting, ids, and text back exactly as the user typed it."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.tasks.tokenizer import PARAGRAPH, UNK, WordTokenizer, detokenize, split_words

AUSTEN = (
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife."
)
TEXTS = [
    AUSTEN,
    '"My dear Mr. Bennet," said his lady to him one day, "have you heard that Netherfield Park '
    'is let at last?"',
    "Emma's sister-in-law came to-morrow--and Mr. Knightley's (dear) friend didn't!",
    "She asked: is it 3 o'clock? Yes; it is.\n\nA new paragraph begins here.",
    "Café naïve résumé, £5 & 10%.",
]


def words(text: str) -> list[str]:
    return [w for w, _, _ in split_words(text)]


def test_split_keeps_contractions_and_splits_possessives() -> None:
    assert words("Emma's friend didn't come to-morrow--no.") == [
        "Emma", "'s", "friend", "didn't", "come", "to", "-", "morrow", "--", "no", ".",
    ]  # fmt: skip
    assert words("one.\n\n  Two") == ["one", ".", PARAGRAPH, "Two"]
    assert words("a line\nbreak") == ["a", "line", "break"]  # one newline is only a space


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_gives_back_the_users_text(text: str) -> None:
    tokenizer = WordTokenizer.train(TEXTS, vocab_size=30)  # small: many words become <unk>
    tokens = tokenizer.tokenize(text)
    assert any(t.id == tokenizer.unk_id for t in tokens), "the test should exercise <unk>"
    assert detokenize(t.text for t in tokens) == text
    for token in tokens:  # offsets point at exactly what was typed
        if token.text != PARAGRAPH:
            assert text[token.start : token.end] == token.text


@pytest.mark.parametrize("text", TEXTS)
def test_ids_decode_to_the_text_when_every_word_is_known(text: str) -> None:
    tokenizer = WordTokenizer.train(TEXTS, vocab_size=1000)
    ids = tokenizer.encode(text)
    assert tokenizer.unk_id not in ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode([tokenizer.bos_id, *ids]) == text  # the start token adds nothing


def test_unknown_words_and_case_folding() -> None:
    kept = WordTokenizer.train(["the cat. The dog."], vocab_size=100)
    assert kept.token_id("The") != kept.token_id("the")
    assert kept.token_id("Zebra") == kept.unk_id
    folded = WordTokenizer.train(["the cat. The dog."], vocab_size=100, lowercase=True)
    assert folded.token_id("The") == folded.token_id("the") == folded.token_id("THE")
    assert [t.text for t in folded.tokenize("THE Cat")] == ["THE", "Cat"]  # echo keeps case


def test_vocabulary_order_size_and_save(tmp_path: Path) -> None:
    tokenizer = WordTokenizer.train(["b b b a a c", "c c d"], vocab_size=5)
    assert tokenizer.words == [UNK, PARAGRAPH, "b", "c", "a"]  # by count, ties alphabetical
    path = tmp_path / "vocab.json"
    tokenizer.save(path)
    again = WordTokenizer.load(path)
    assert again.words == tokenizer.words and again.lowercase == tokenizer.lowercase


def test_detokenizer_spacing_rules() -> None:
    assert detokenize(['"', "Yes", ",", '"', "said", "she", "."]) == '"Yes," said she.'
    assert detokenize(["well", "--", "I", "(", "think", ")", "so", "!"]) == "well--I (think) so!"
    assert detokenize(["end", ".", PARAGRAPH, "Next"]) == "end.\n\nNext"
