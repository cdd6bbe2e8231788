"""The tokenizer's training corpus, fully deterministic.

* a fixed selection of Python standard-library sources (sorted paths, seeded shuffle,
  size budget; tests, encodings tables and machine-specific files are skipped), and
* generated English text: simple factual sentences plus ``Question: ...\\nAnswer: ...``
  pairs in the style of closed-book trivia QA, built from the word lists of
  ``tokenizer_words`` and a seeded RNG.
"""

from __future__ import annotations

import random
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from tokenizer_words import (
    ADJECTIVES,
    ANIMALS,
    COUNTRIES,
    ELEMENTS,
    FILLER,
    FIRST_NAMES,
    GROUPS,
    LAST_NAMES,
    MONTHS,
    NOUNS,
    PROFESSIONS,
    WORKS,
)

CODE_BUDGET_BYTES = 3_000_000
MAX_FILE_BYTES = 120_000
SKIP_DIR_NAMES = {
    "__pycache__",
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idle_test",
    "encodings",
    "pydoc_data",
}
SEED = 20240601
NUM_FACTS = 12_000
NUM_QA = 12_000


def _person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def _title(rng: random.Random) -> str:
    words = rng.sample(FILLER + [w.capitalize() for w in NOUNS + ANIMALS], rng.randint(1, 4))
    return " ".join(w.capitalize() for w in words)


def _fact(rng: random.Random) -> tuple[str, str, str]:
    """Return (statement, question, answer) for one random fact."""
    kind = rng.randrange(8)
    if kind == 0:
        country, capital, _, _ = rng.choice(COUNTRIES)
        return (
            f"The capital of {country} is {capital}.",
            f"What is the capital city of {country}?",
            capital,
        )
    if kind == 1:
        country, _, language, continent = rng.choice(COUNTRIES)
        return (
            f"{country} is a country in {continent} where {language} is widely spoken.",
            f"Which language is most widely spoken in {country}?",
            language,
        )
    if kind == 2:
        name, job, year = _person(rng), rng.choice(PROFESSIONS), rng.randint(1500, 1999)
        country = rng.choice(COUNTRIES)[0]
        return (
            f"{name} was a {job} born in {country} in {year}.",
            f"In which year was the {country}-born {job} {name} born?",
            str(year),
        )
    if kind == 3:
        name, work, title = _person(rng), rng.choice(WORKS), _title(rng)
        year = rng.randint(1700, 2020)
        return (
            f'The {work} "{title}" was written by {name} in {year}.',
            f'Who wrote the {year} {work} "{title}"?',
            name,
        )
    if kind == 4:
        element, symbol, number = rng.choice(ELEMENTS)
        return (
            f"The chemical element {element} has the symbol {symbol} and atomic number {number}.",
            f"Which chemical element has the symbol {symbol}?",
            element.capitalize(),
        )
    if kind == 5:
        animal, group = rng.choice(sorted(GROUPS.items()))
        return (
            f"A group of {animal}s is called a {group}.",
            f"What is the collective noun for a group of {animal}s?",
            f"A {group}",
        )
    if kind == 6:
        noun, adj = rng.choice(NOUNS), rng.choice(ADJECTIVES)
        country, capital, _, _ = rng.choice(COUNTRIES)
        return (
            f"The {adj} {noun} in {country} is near {capital}.",
            f"Near which city is the {adj} {noun} in {country}?",
            capital,
        )
    name, month = _person(rng), rng.choice(MONTHS)
    day, year = rng.randint(1, 28), rng.randint(1800, 2020)
    number = rng.randint(2, 99)
    return (
        f"On {day} {month} {year}, {name} won {number} games and became famous.",
        f"How many games did {name} win on {day} {month} {year}?",
        str(number),
    )


def text_corpus(seed: int = SEED) -> Iterator[str]:
    """Yield generated English sentences and trivia-style question/answer lines."""
    rng = random.Random(seed)
    for _ in range(NUM_FACTS):
        statement = _fact(rng)[0]
        tail = " ".join(rng.choice(FILLER) for _ in range(rng.randint(0, 12)))
        yield f"{statement} {tail.capitalize()}." if tail else statement
    for _ in range(NUM_QA):
        _, question, answer = _fact(rng)
        yield f"Question: {question}\nAnswer: {answer}\n"


def _skip(rel: Path) -> bool:
    parts = rel.parts
    if any(p in SKIP_DIR_NAMES or p.startswith("config-") for p in parts[:-1]):
        return True
    return rel.name.startswith("_sysconfigdata")


def stdlib_files(budget: int = CODE_BUDGET_BYTES, seed: int = SEED) -> list[Path]:
    """A fixed selection of stdlib ``*.py`` files totalling at most ``budget`` bytes."""
    root = Path(sysconfig.get_paths()["stdlib"])
    candidates = sorted(
        (p for p in root.rglob("*.py") if not _skip(p.relative_to(root))),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    random.Random(seed).shuffle(candidates)
    chosen, total = [], 0
    for path in candidates:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES or total + size > budget:
            continue
        chosen.append(path)
        total += size
    return sorted(chosen, key=lambda p: p.relative_to(root).as_posix())


def code_corpus() -> Iterator[str]:
    for path in stdlib_files():
        try:
            yield path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
