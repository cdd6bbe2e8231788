"""Made-up but pronounceable names for the synthetic world, and how many entities of each kind.

Names(rng).fresh(min_syllables, max_syllables, suffixes)   a word never handed out before
kind_counts(num_entities)   people, countries, cities and rivers in shares 3:1:2:2
"""

from __future__ import annotations

import random

_ONSETS = (
    "b",
    "d",
    "f",
    "g",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "gr",
    "kr",
    "tr",
    "th",
    "sh",
    "st",
    "v",
    "k",
    "t",
    "m",
)
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "a", "e", "o", "ai", "ou")
_INNER_CODAS = ("l", "n", "r", "s", "m")
_FINAL_CODAS = ("", "", "l", "n", "r", "s", "m", "k", "th", "nd", "rn", "sk")
COUNTRY_SUFFIXES = ("ia", "ia", "ar", "esh", "and", "ova", "")
LANGUAGE_SUFFIXES = ("ish", "ic", "ese", "an", "i")
CITY_PREFIXES = ("Port", "New", "Fort", "Saint", "North", "Upper")

PROFESSIONS = (
    "painter",
    "composer",
    "novelist",
    "poet",
    "physicist",
    "chemist",
    "astronomer",
    "engineer",
    "architect",
    "explorer",
    "inventor",
    "philosopher",
    "mathematician",
    "actor",
    "singer",
    "sculptor",
    "surgeon",
    "botanist",
    "cartographer",
    "historian",
)

# Share of each kind among the entities (people, countries, cities, rivers).
_KIND_SHARES = (("person", 3), ("country", 1), ("city", 2), ("river", 2))
RELATIONS = {
    "person": ("born_in", "profession", "birth_year"),
    "country": ("capital", "currency", "language"),
    "city": ("city_country", "founded", "city_river"),
    "river": ("flows_into", "river_country", "length"),
}


class Names:
    """Fresh pronounceable words; no word is handed out twice."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._used: set[str] = set()

    def _word(self, syllables: int) -> str:
        rng, parts = self._rng, []
        for i in range(syllables):
            onset = "" if i == 0 and rng.random() < 0.2 else rng.choice(_ONSETS)
            if i > 0 and parts[-1][-1] not in "aeiou" and len(onset) > 1:
                onset = onset[0]  # keep consonant clusters short across syllables
            coda = ""
            if i == syllables - 1:
                coda = rng.choice(_FINAL_CODAS)
            elif rng.random() < 0.35:
                coda = rng.choice(_INNER_CODAS)
            parts.append(onset + rng.choice(_VOWELS) + coda)
        return "".join(parts).capitalize()

    def fresh(self, min_syllables: int = 2, max_syllables: int = 3, suffixes=("",)) -> str:
        while True:
            word = self._word(self._rng.randint(min_syllables, max_syllables))
            suffix = self._rng.choice(suffixes)
            if suffix and word[-1] in "aeiou" and suffix[0] in "aeiou":
                word = word[:-1]
            word += suffix
            if 4 <= len(word) <= 10 and word not in self._used:
                self._used.add(word)
                return word


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def kind_counts(num_entities: int) -> dict[str, int]:
    """Largest-remainder split of the entities by ``_KIND_SHARES``, at least one of each."""
    total = sum(share for _, share in _KIND_SHARES)
    exact = {kind: num_entities * share / total for kind, share in _KIND_SHARES}
    counts = {kind: max(1, int(v)) for kind, v in exact.items()}
    by_remainder = sorted(exact, key=lambda k: (-(exact[k] - int(exact[k])), k))
    i = 0
    while sum(counts.values()) < num_entities:
        counts[by_remainder[i % len(by_remainder)]] += 1
        i += 1
    while sum(counts.values()) > num_entities:  # only when a kind was raised to one
        largest = max(counts, key=lambda k: counts[k])
        counts[largest] -= 1
    return counts
