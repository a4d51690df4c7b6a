"""Tokenization parity with the `tokenizers` package's BERT WordPiece on the same vocabulary."""

from __future__ import annotations

import numpy as np
import pytest

import liteclip

import reference

TEXTS = [
    "a photo of a dog",
    "A Photo OF a DOG!",
    "Two young, White males are outside near many bushes.",
    "naïve café résumé — Ünïcödé",
    "東京タワー and 🚀 rockets",
    "",
    "   ",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "word " * 200,
]


def test_known_ids():
    ids = liteclip.tokenize("a photo of a dog")["input_ids"][0]
    assert list(ids[:7]) == [101, 1037, 6302, 1997, 1037, 3899, 102]


@pytest.mark.parametrize("max_length", [128, 16])
def test_matches_reference_padded_to_max_length(max_length):
    got = liteclip.tokenize(TEXTS, max_length=max_length)
    expected = reference.tokenize(TEXTS, max_length=max_length)
    assert set(got) == {"input_ids", "attention_mask", "token_type_ids"}
    for key in got:
        assert got[key].dtype == np.int64
        np.testing.assert_array_equal(got[key], expected[key].numpy(), err_msg=key)


def test_longest_padding():
    got = liteclip.tokenize(TEXTS[:3], padding="longest")
    expected = reference.tokenize(TEXTS[:3], pad_to_max=False)
    np.testing.assert_array_equal(got["input_ids"], expected["input_ids"].numpy())
    np.testing.assert_array_equal(got["attention_mask"], expected["attention_mask"].numpy())


def test_bad_arguments():
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        liteclip.tokenize(["ok", 3])
    with pytest.raises(TypeError):
        liteclip.tokenize(42)
    with pytest.raises(ValueError, match="padding"):
        liteclip.tokenize("x", padding="sideways")
    with pytest.raises(ValueError, match="max_length"):
        liteclip.tokenize("x", max_length=1)
