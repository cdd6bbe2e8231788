"""TriviaQA scoring: answer normalization, exact match, the one-shot prompt, answer cuts."""

from __future__ import annotations

import pytest
from triviaqa_helpers import EXPECTED

from kvpred.tasks import (
    TRIVIAQA_STOP_STRINGS,
    cut_answer,
    exact_match,
    normalize_answer,
    one_shot_prompt,
)

# ----------------------------------------------------------------------------- TriviaQA scoring


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("The Beatles", "beatles"),
        ("A Tale of Two Cities", "tale of two cities"),
        ("an apple a day", "apple day"),
        ("AN", ""),
        ("Theatre", "theatre"),  # articles only as whole words
        ("the\u00f1", "the\u00f1"),  # \b is unicode-aware: ñ is a word character
        ("U.S.A.", "u s"),  # punctuation becomes a space, so the final "a" is an article
        ("the.a.an", ""),
        ("Hugo, Victor", "hugo victor"),
        ("Mr. & Mrs. Smith", "mr mrs smith"),
        ("AT&T", "at t"),
        ("o'the", "o"),
        ("Rock-n-Roll", "rock n roll"),
        ("rock_and_roll", "rock and roll"),
        ("The_Who", "who"),
        ("100%", "100"),
        ("x+y=z", "x y z"),
        # the four extra characters of the official script: ‘ ’ ´ `
        ("Don\u2019t Stop", "don t stop"),
        ("\u2018Quoted\u2019", "quoted"),
        ("caf\u00e9\u00b4s", "caf\u00e9 s"),
        ("`tick`", "tick"),
        # curly double quotes and other non-ASCII symbols are kept
        ("\u201cCurly double\u201d", "\u201ccurly double\u201d"),
        ("\u00a35", "\u00a35"),
        ("\u0391\u0392\u0393", "\u03b1\u03b2\u03b3"),
        ("\u0130stanbul", "i\u0307stanbul"),  # str.lower, not casefold
        ("  Spaces\tand\nnewlines  ", "spaces and newlines"),
        ("a\u00a0the\u2003b", "b"),  # unicode whitespace collapses too
        ("", ""),
    ],
)
def test_normalize_answer_matches_the_official_script(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_exact_match_is_the_max_over_aliases():
    hugo = EXPECTED[1]
    assert exact_match("Victor Hugo", hugo)
    assert exact_match(" hugo victor ", hugo.answers)  # alias "Hugo, Victor"
    assert exact_match("Victor Marie Hugo.", hugo)  # alias "Victor-Marie Hugo"
    assert exact_match("v hugo", hugo)
    assert not exact_match("Hugo", hugo)
    assert not exact_match("Victor Hugo wrote it", hugo)
    assert exact_match("the Mercury", EXPECTED[0])
    assert exact_match("mercury planet", EXPECTED[0])
    assert exact_match("City by the Bay", EXPECTED[2])
    assert exact_match("Mercury", "mercury")
    assert not exact_match("", EXPECTED[3])
    with pytest.raises(ValueError, match="at least one"):
        exact_match("x", [])


def test_one_shot_prompt_format():
    q = "Which planet is known as the red planet?"
    want = (
        "Question: What is the chemical symbol of tungsten?\nAnswer: W\n\n"
        "Question: Which planet is known as the red planet?\nAnswer:"
    )
    assert one_shot_prompt(q, EXPECTED[3]) == want
    assert one_shot_prompt(q, ("What is the chemical symbol of tungsten?", "W")) == want


def test_cut_answer_stops_at_newline_full_stop_or_comma():
    assert TRIVIAQA_STOP_STRINGS == ("\n", ".", ",")
    assert cut_answer(" Mars\n\nQuestion: next") == "Mars"
    assert cut_answer(" Washington, D.C.") == "Washington"
    assert cut_answer(" Victor Hugo. He wrote") == "Victor Hugo"
    assert cut_answer("  Groundhog Day  ") == "Groundhog Day"
    assert cut_answer("\nMars") == ""
    assert cut_answer("") == ""
    # end to end: cut, then score
    assert exact_match(cut_answer(" the planet Mercury, closest"), EXPECTED[0])
