"""The TriviaQA tests' examples: the five questions of the files in tests/data, as
`load_triviaqa` must read them (value first, then the aliases, deduplicated)."""

from __future__ import annotations

from kvpred.tasks import QAExample

EXPECTED = [
    QAExample(
        "fx_1",
        "Which planet of the solar system has the shortest year?",
        ("Mercury", "Planet Mercury", "Mercury (planet)", "\u263f"),
    ),
    QAExample(
        "fx_2",
        "Which French writer wrote the novel \u2018Les Mis\u00e9rables\u2019?",
        ("Victor Hugo", "Hugo, Victor", "Victor-Marie Hugo", "V. Hugo"),
    ),
    QAExample(
        "fx_3",
        "In which US city does the Golden Gate Bridge stand?",
        (
            "San Francisco",
            "San Francisco, California",
            "SF",
            "San Fransisco",
            "The City by the Bay",
        ),
    ),
    QAExample("fx_4", "What is the chemical symbol of tungsten?", ("W", "Wolfram")),
    QAExample(
        "fx_5",
        "In which 1993 film does a weatherman live the same day over and over?",
        ("Groundhog Day", "Groundhog Day (film)", "Ground Hog Day"),
    ),
]
