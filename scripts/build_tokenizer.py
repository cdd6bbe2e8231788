"""Train the byte-level BPE tokenizer embedded in ``jaxserve/assets/tokenizer.json``.

The training corpus is fully deterministic:

* a fixed selection of Python standard-library sources (sorted paths, seeded shuffle,
  size budget; tests, encodings tables and machine-specific files are skipped), and
* generated English text: simple factual sentences plus ``Question: ...\\nAnswer: ...``
  pairs in the style of closed-book trivia QA, built from fixed word lists and a seeded RNG.

The stdlib component depends on the interpreter's stdlib sources, so the output is only
byte-identical when rebuilt with the same Python version (see ``REFERENCE_PYTHON``).

Usage: ``python scripts/build_tokenizer.py [--out PATH]``
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "jaxserve" / "assets" / "tokenizer.json"
REFERENCE_PYTHON = "3.11.7"

VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>"]

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

# --------------------------------------------------------------------------- word lists

COUNTRIES = [
    ("France", "Paris", "French", "Europe"),
    ("Germany", "Berlin", "German", "Europe"),
    ("Italy", "Rome", "Italian", "Europe"),
    ("Spain", "Madrid", "Spanish", "Europe"),
    ("Portugal", "Lisbon", "Portuguese", "Europe"),
    ("Japan", "Tokyo", "Japanese", "Asia"),
    ("China", "Beijing", "Chinese", "Asia"),
    ("India", "New Delhi", "Hindi", "Asia"),
    ("Egypt", "Cairo", "Arabic", "Africa"),
    ("Kenya", "Nairobi", "Swahili", "Africa"),
    ("Brazil", "Brasilia", "Portuguese", "South America"),
    ("Argentina", "Buenos Aires", "Spanish", "South America"),
    ("Peru", "Lima", "Spanish", "South America"),
    ("Canada", "Ottawa", "English", "North America"),
    ("Mexico", "Mexico City", "Spanish", "North America"),
    ("Australia", "Canberra", "English", "Oceania"),
    ("Norway", "Oslo", "Norwegian", "Europe"),
    ("Sweden", "Stockholm", "Swedish", "Europe"),
    ("Greece", "Athens", "Greek", "Europe"),
    ("Turkey", "Ankara", "Turkish", "Asia"),
    ("Russia", "Moscow", "Russian", "Europe"),
    ("Poland", "Warsaw", "Polish", "Europe"),
    ("Ireland", "Dublin", "Irish", "Europe"),
    ("Scotland", "Edinburgh", "English", "Europe"),
    ("Thailand", "Bangkok", "Thai", "Asia"),
    ("Vietnam", "Hanoi", "Vietnamese", "Asia"),
    ("Nigeria", "Abuja", "English", "Africa"),
    ("Morocco", "Rabat", "Arabic", "Africa"),
    ("Chile", "Santiago", "Spanish", "South America"),
    ("New Zealand", "Wellington", "English", "Oceania"),
]
FIRST_NAMES = [
    "John",
    "Mary",
    "William",
    "Elizabeth",
    "James",
    "Margaret",
    "Charles",
    "Anne",
    "George",
    "Victoria",
    "Henry",
    "Catherine",
    "Thomas",
    "Jane",
    "Edward",
    "Alice",
    "Richard",
    "Emily",
    "Robert",
    "Charlotte",
    "David",
    "Sarah",
    "Peter",
    "Helen",
    "Michael",
    "Grace",
    "Arthur",
    "Rose",
    "Albert",
    "Florence",
]
LAST_NAMES = [
    "Smith",
    "Brown",
    "Taylor",
    "Wilson",
    "Davies",
    "Evans",
    "Johnson",
    "Roberts",
    "Walker",
    "Wright",
    "Thompson",
    "White",
    "Hughes",
    "Edwards",
    "Green",
    "Hall",
    "Wood",
    "Harris",
    "Martin",
    "Jackson",
    "Clarke",
    "Lewis",
    "Turner",
    "Hill",
    "Cooper",
    "Ward",
    "Morgan",
    "King",
    "Baker",
    "Carter",
]
PROFESSIONS = [
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
    "footballer",
    "tennis player",
    "politician",
    "surgeon",
    "sculptor",
]
WORKS = [
    "novel",
    "opera",
    "symphony",
    "play",
    "poem",
    "film",
    "song",
    "painting",
    "album",
    "treatise",
    "television series",
    "musical",
]
NOUNS = [
    "river",
    "mountain",
    "island",
    "lake",
    "desert",
    "forest",
    "bridge",
    "castle",
    "cathedral",
    "museum",
    "university",
    "railway",
    "harbour",
    "volcano",
    "canal",
    "tower",
    "palace",
    "stadium",
    "library",
    "theatre",
]
ADJECTIVES = [
    "longest",
    "highest",
    "largest",
    "oldest",
    "smallest",
    "deepest",
    "busiest",
    "tallest",
    "most famous",
    "first",
]
ELEMENTS = [
    ("hydrogen", "H", 1),
    ("helium", "He", 2),
    ("carbon", "C", 6),
    ("nitrogen", "N", 7),
    ("oxygen", "O", 8),
    ("sodium", "Na", 11),
    ("iron", "Fe", 26),
    ("copper", "Cu", 29),
    ("silver", "Ag", 47),
    ("tin", "Sn", 50),
    ("gold", "Au", 79),
    ("mercury", "Hg", 80),
    ("lead", "Pb", 82),
    ("uranium", "U", 92),
    ("potassium", "K", 19),
    ("calcium", "Ca", 20),
]
ANIMALS = [
    "lion",
    "tiger",
    "elephant",
    "whale",
    "eagle",
    "wolf",
    "bear",
    "horse",
    "dolphin",
    "penguin",
    "kangaroo",
    "giraffe",
    "zebra",
    "owl",
    "shark",
    "fox",
]
GROUPS = {
    "lion": "pride",
    "wolf": "pack",
    "whale": "pod",
    "owl": "parliament",
    "fox": "skulk",
    "crow": "murder",
    "goose": "gaggle",
    "fish": "school",
    "bee": "swarm",
    "cow": "herd",
}
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
FILLER = (
    "the of and a in to was is for on with as by that it from at his which he an "
    "be this are were had also has her she they their first one two three after "
    "during between many most known called after other new more later been who "
    "years world city war century people game team year time state part name "
    "however while where when what how because before since under until within "
    "became founded built born died won wrote played began ended located named"
).split()


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


def build() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    documents = list(code_corpus()) + list(text_corpus())
    tokenizer.train_from_iterator(documents, trainer=trainer, length=len(documents))
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == expected_id, token
    assert tokenizer.get_vocab_size() == VOCAB_SIZE
    return tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output tokenizer.json")
    args = parser.parse_args(argv)
    if platform.python_version() != REFERENCE_PYTHON:
        print(
            f"warning: Python {platform.python_version()} differs from {REFERENCE_PYTHON}; "
            "the stdlib corpus (and hence the output) may differ",
            file=sys.stderr,
        )
    start = time.perf_counter()
    tokenizer = build()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(args.out), pretty=False)
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size} bytes) in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
