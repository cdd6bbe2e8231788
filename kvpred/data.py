"""Training data for tiny models: a synthetic closed-book QA knowledge base and Python code.

Everything is deterministic: the same arguments give the same facts, documents and batches.

Knowledge base
    ``Fact(entity, relation, answer, aliases)``: one fact; ``answer`` is the canonical form
        (1-3 words, never containing ".", "," or a newline), ``aliases`` other accepted forms.
    ``KnowledgeBase(num_entities=96, seed=0, holdout_fraction=0.0)``: made-up entities of four
        kinds (people, countries, cities, rivers), three relations each (96 entities -> 288
        facts), forming a consistent little world (a city lies on a river that flows through
        the city's country; a capital is one of the country's cities).
        ``kb.facts()``            all facts, in a fixed order
        ``kb.question(fact)``     the TriviaQA-style question (one template per fact, fixed)
        ``kb.statements(fact)``   several declarative sentences stating the fact
        ``kb.qa_examples(split)`` ``QAExample(qid, question, answers)`` with the answer first,
            then its aliases. ``split`` is "all", "train" or "eval". With ``holdout_fraction``
            0 (closed-book memorisation) "train" and "eval" are both every fact; otherwise
            "eval" is a seeded held-out subset whose QA form never appears in the training
            text (their statements still do) and "train" is the rest.
        ``kb.split_facts(split)``, ``kb.is_held_out(fact)``, ``kb.entities()``, ``kb.kind(e)``
            the same split as facts; whether a fact is held out; entity names; an entity's kind.
    ``qa_prompt(question, shot=None)``: the evaluation prompt, ``"Question: {q}\\nAnswer:"``,
        optionally preceded by a solved example ``"Question: {q0}\\nAnswer: {a0}\\n\\n"``.
        Evaluation decodes greedily after it and cuts the answer at a newline, "." or ",".
    ``qa_documents(kb, seed=0, shots=3)``: training documents for every fact: its statements
        followed by its zero-shot QA form, ``shots`` one-shot QA forms with other facts as the
        shot, the bare QA form, and one paragraph of statements per entity. QA forms are
        ``qa_prompt(...) + " " + answer + "\\n"``, so the evaluation prompt is a prefix of them.

Code
    ``stdlib_files(max_bytes, seed)``: a seeded selection of the interpreter's standard-library
        ``*.py`` files (no tests, site-packages, encodings, caches or huge files).
    ``code_documents(max_bytes=1_000_000, seed=0, chunk_bytes=4096)``: their text, cut at line
        boundaries into chunks of at most ``chunk_bytes`` (longer single lines stay whole).
        Identical for a given interpreter installation.

Batches
    ``TokenStream(tokenizer, documents, weights=None, seq_len=128, batch_size=32, seed=0)``:
        ``documents`` maps a source name to its texts, ``weights`` gives each source's share of
        the rows (default: proportional to its token count). Texts are tokenised once, as
        ``[BOS] + text + [EOS]``. ``stream.batch(step)`` is a pure function of ``step``: each
        row takes its source by weight, then packs uniformly drawn whole documents until the
        next one does not fit, and pads the rest; a document longer than a whole row
        contributes a random window that fills the remaining space instead. It returns numpy
        arrays: ``tokens`` int32 [B, T+1]; ``inputs`` and ``targets`` int32 [B, T] (the two
        shifted views); ``mask`` float32 [B, T], 0 exactly where the target is padding;
        ``segment_ids`` int32 [B, T], the 1-based index of the document each input position
        belongs to within its row (0 on padding), for attention masks across documents.

``QAExample`` is the TriviaQA task's example type (``kvpred.tasks.triviaqa``), and ``qa_prompt``
builds the same text as its ``one_shot_prompt``, so the synthetic QA set runs through the same
evaluation as TriviaQA itself.
"""

from __future__ import annotations

import functools
import random
import sysconfig
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kvpred.tasks.triviaqa import QAExample

__all__ = [
    "Fact",
    "KnowledgeBase",
    "QAExample",
    "TokenStream",
    "code_documents",
    "qa_documents",
    "qa_prompt",
    "stdlib_files",
]

SPLITS = ("all", "train", "eval")
FORBIDDEN_IN_ANSWER = (".", ",", "\n")


@dataclass(frozen=True)
class Fact:
    entity: str
    relation: str
    answer: str
    aliases: tuple[str, ...]


# --------------------------------------------------------------------------- name generation

_ONSETS = (
    "b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
    "br", "dr", "gr", "kr", "tr", "th", "sh", "st", "v", "k", "t", "m",
)  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "a", "e", "o", "ai", "ou")
_INNER_CODAS = ("l", "n", "r", "s", "m")
_FINAL_CODAS = ("", "", "l", "n", "r", "s", "m", "k", "th", "nd", "rn", "sk")
_COUNTRY_SUFFIXES = ("ia", "ia", "ar", "esh", "and", "ova", "")
_LANGUAGE_SUFFIXES = ("ish", "ic", "ese", "an", "i")
_CITY_PREFIXES = ("Port", "New", "Fort", "Saint", "North", "Upper")

PROFESSIONS = (
    "painter", "composer", "novelist", "poet", "physicist", "chemist", "astronomer",
    "engineer", "architect", "explorer", "inventor", "philosopher", "mathematician",
    "actor", "singer", "sculptor", "surgeon", "botanist", "cartographer", "historian",
)  # fmt: skip

# Share of each kind among the entities (people, countries, cities, rivers).
_KIND_SHARES = (("person", 3), ("country", 1), ("city", 2), ("river", 2))
RELATIONS = {
    "person": ("born_in", "profession", "birth_year"),
    "country": ("capital", "currency", "language"),
    "city": ("city_country", "founded", "city_river"),
    "river": ("flows_into", "river_country", "length"),
}


class _Names:
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


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _kind_counts(num_entities: int) -> dict[str, int]:
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


# --------------------------------------------------------------------------- templates

# Question templates per relation. Fields: {e} entity (display form), {job} a person's
# profession. One template is picked per fact, from a hash of (seed, entity, relation).
_QUESTIONS = {
    "born_in": (
        "Which city was the {job} {e} born in?",
        "In which city was {e} born?",
        "Where was the {job} {e} born?",
        "{e} was born in which city?",
    ),
    "profession": (
        "What was the profession of {e}?",
        "What did {e} do for a living?",
        "What was {e}'s profession?",
    ),
    "birth_year": (
        "In which year was {e} born?",
        "In what year was the {job} {e} born?",
        "{e} was born in which year?",
    ),
    "capital": (
        "What is the capital of {e}?",
        "What is the capital city of {e}?",
        "Which city is the capital of {e}?",
    ),
    "currency": (
        "What is the currency of {e}?",
        "What is the name of the currency used in {e}?",
        "Which currency is used in {e}?",
    ),
    "language": (
        "What is the official language of {e}?",
        "Which language is mainly spoken in {e}?",
        "What language do the people of {e} speak?",
    ),
    "city_country": (
        "In which country is the city of {e}?",
        "{e} is a city in which country?",
        "Which country is {e} in?",
    ),
    "founded": (
        "In which year was the city of {e} founded?",
        "When was {e} founded?",
        "{e} was founded in which year?",
    ),
    "city_river": (
        "On which river does the city of {e} lie?",
        "Which river flows through {e}?",
        "{e} stands on which river?",
    ),
    "flows_into": (
        "Into which body of water does the River {e} flow?",
        "What does the River {e} flow into?",
        "Where does the River {e} end?",
    ),
    "river_country": (
        "Through which country does the River {e} flow?",
        "In which country is the River {e}?",
        "The River {e} is in which country?",
    ),
    "length": (
        "How long is the River {e}?",
        "What is the length of the River {e}?",
        "How many kilometres long is the River {e}?",
    ),
}

# Statement templates per relation. Fields: {e} entity, {a} canonical answer, {art} "a"/"an"
# for the answer, {job} a person's profession.
_STATEMENTS = {
    "born_in": (
        "{e} was born in {a}.",
        "The {job} {e} was born in the city of {a}.",
        "{a} is the birthplace of {e}.",
        "{e} came into the world in {a}.",
    ),
    "profession": (
        "{e} was {art} {a}.",
        "By profession {e} was {art} {a}.",
        "{e} worked as {art} {a} for most of their life.",
        "The {a} {e} is remembered for their work.",
    ),
    "birth_year": (
        "{e} was born in {a}.",
        "The {job} {e} was born in the year {a}.",
        "In {a} the future {job} {e} was born.",
        "{e} (born {a}) was {art_job} {job}.",
    ),
    "capital": (
        "The capital of {e} is {a}.",
        "{a} is the capital city of {e}.",
        "The government of {e} sits in its capital {a}.",
        "{e} has {a} as its capital.",
    ),
    "currency": (
        "The currency of {e} is the {a}.",
        "People in {e} pay with the {a}.",
        "The {a} is the official currency of {e}.",
        "In {e} prices are given in {a}s.",
    ),
    "language": (
        "The official language of {e} is {a}.",
        "Most people in {e} speak {a}.",
        "{a} is the main language spoken in {e}.",
        "In {e} the language of daily life is {a}.",
    ),
    "city_country": (
        "{e} is a city in {a}.",
        "The city of {e} lies in {a}.",
        "{e} is one of the cities of {a}.",
        "Travellers find {e} in the country of {a}.",
    ),
    "founded": (
        "{e} was founded in {a}.",
        "The city of {e} was founded in the year {a}.",
        "In {a} settlers founded the city of {e}.",
        "{e} has existed since its founding in {a}.",
    ),
    "city_river": (
        "{e} lies on the River {a}.",
        "The River {a} flows through the city of {e}.",
        "The city of {e} was built on the banks of the {a}.",
        "Boats on the River {a} pass through {e}.",
    ),
    "flows_into": (
        "The River {e} flows into the {a}.",
        "The {e} empties into the {a}.",
        "At its mouth the River {e} meets the {a}.",
        "The waters of the River {e} end in the {a}.",
    ),
    "river_country": (
        "The River {e} flows through {a}.",
        "The {e} is a river in {a}.",
        "The River {e} runs across the country of {a}.",
        "{a} is the country of the River {e}.",
    ),
    "length": (
        "The River {e} is {a} long.",
        "The {e} has a length of {a}.",
        "From source to mouth the River {e} runs {a}.",
        "The River {e} measures {a} in length.",
    ),
}
_PERSON_RELATIONS = frozenset(RELATIONS["person"])


def _stable_index(n: int, *parts: object) -> int:
    return zlib.crc32("|".join(str(p) for p in parts).encode()) % n


# --------------------------------------------------------------------------- knowledge base


class KnowledgeBase:
    """A deterministic synthetic world of ``num_entities`` entities with three facts each."""

    def __init__(self, num_entities: int = 96, seed: int = 0, holdout_fraction: float = 0.0):
        if num_entities < 4:
            raise ValueError(f"need at least 4 entities (one per kind), got {num_entities}")
        if not 0.0 <= holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
        self.num_entities, self.seed, self.holdout_fraction = num_entities, seed, holdout_fraction
        self._kind: dict[str, str] = {}
        self._facts: list[Fact] = []
        self._by_entity: dict[str, dict[str, Fact]] = {}
        self._build(random.Random(f"kvpred-kb-{seed}"))
        for fact in self._facts:
            if any(ch in fact.answer for ch in FORBIDDEN_IN_ANSWER):
                raise AssertionError(f"bad canonical answer {fact.answer!r}")
        order = list(range(len(self._facts)))
        random.Random(f"kvpred-holdout-{seed}").shuffle(order)
        num_held = round(holdout_fraction * len(order))
        self._held_out = frozenset(order[:num_held])
        self._index = {(f.entity, f.relation): i for i, f in enumerate(self._facts)}

    # -- construction --------------------------------------------------------------------

    def _build(self, rng: random.Random) -> None:
        names = _Names(rng)
        counts = _kind_counts(self.num_entities)
        countries = [names.fresh(2, 2, _COUNTRY_SUFFIXES) for _ in range(counts["country"])]
        rivers = [names.fresh(2, 3) for _ in range(counts["river"])]
        cities = [self._city_name(names, rng) for _ in range(counts["city"])]
        people = [f"{names.fresh(2, 2)} {names.fresh(2, 2)}" for _ in range(counts["person"])]

        def add(entity: str, kind: str, relation: str, answer: str, *aliases: str) -> None:
            self._kind[entity] = kind
            fact = Fact(entity, relation, answer, tuple(aliases))
            self._facts.append(fact)
            self._by_entity.setdefault(entity, {})[relation] = fact

        river_country = {r: rng.choice(countries) for r in rivers}
        city_river = {c: rng.choice(rivers) for c in cities}
        city_country = {c: river_country[city_river[c]] for c in cities}

        for person in people:
            city = rng.choice(cities)
            job = rng.choice(PROFESSIONS)
            year = str(rng.randint(1650, 1990))
            add(person, "person", "born_in", city, *self._city_aliases(city))
            add(person, "person", "profession", job, f"{_article(job)} {job}", job.capitalize())
            add(person, "person", "birth_year", year, f"in {year}")
        for country in countries:
            own = [c for c in cities if city_country[c] == country]
            capital = own[0] if own else self._city_name(names, rng)
            currency = names.fresh(2, 2)
            language = names.fresh(1, 2, _LANGUAGE_SUFFIXES)
            add(country, "country", "capital", capital, *self._city_aliases(capital))
            add(country, "country", "currency", currency, f"the {currency}", f"{currency}s")
            add(
                country, "country", "language", language,
                f"{language} language", f"the {language} language",
            )  # fmt: skip
        for city in cities:
            river = city_river[city]
            year = str(rng.randint(900, 1899))
            add(city, "city", "city_country", city_country[city])
            add(city, "city", "founded", year, f"in {year}")
            add(city, "city", "city_river", river, *self._river_aliases(river))
        for river in rivers:
            word, style = names.fresh(2, 2), rng.randrange(3)
            if style == 0:
                mouth, aliases = f"{word} Sea", (f"the {word} Sea", word)
            elif style == 1:
                mouth, aliases = f"Lake {word}", (word,)
            else:
                mouth, aliases = f"Gulf of {word}", (f"the Gulf of {word}", word)
            km = rng.randint(12, 320) * 10
            add(river, "river", "flows_into", mouth, *aliases)
            add(river, "river", "river_country", river_country[river])
            add(river, "river", "length", f"{km} kilometres", f"{km} km", f"{km}")

    @staticmethod
    def _city_name(names: _Names, rng: random.Random) -> str:
        word = names.fresh(2, 3)
        return f"{rng.choice(_CITY_PREFIXES)} {word}" if rng.random() < 0.25 else word

    @staticmethod
    def _city_aliases(city: str) -> tuple[str, ...]:
        if " " not in city:
            return ()
        prefix, word = city.split(" ", 1)
        aliases = (word,)
        if prefix == "Saint":
            aliases += (f"St. {word}", f"St {word}")
        return aliases

    @staticmethod
    def _river_aliases(river: str) -> tuple[str, ...]:
        return (f"River {river}", f"the River {river}", f"the {river}", f"{river} River")

    # -- queries -------------------------------------------------------------------------

    def facts(self) -> list[Fact]:
        return list(self._facts)

    def kind(self, entity: str) -> str:
        """'person', 'country', 'city' or 'river'."""
        return self._kind[entity]

    def entities(self) -> list[str]:
        return list(self._by_entity)

    def is_held_out(self, fact: Fact) -> bool:
        return self._index[(fact.entity, fact.relation)] in self._held_out

    def _fields(self, fact: Fact) -> dict[str, str]:
        fields = {"e": fact.entity, "a": fact.answer, "art": _article(fact.answer)}
        if fact.relation in _PERSON_RELATIONS:
            job = self._by_entity[fact.entity]["profession"].answer
            fields.update(job=job, art_job=_article(job))
        return fields

    def question(self, fact: Fact) -> str:
        templates = _QUESTIONS[fact.relation]
        template = templates[_stable_index(len(templates), self.seed, fact.entity, fact.relation)]
        return template.format(**self._fields(fact))

    def statements(self, fact: Fact) -> list[str]:
        fields = self._fields(fact)
        return [template.format(**fields) for template in _STATEMENTS[fact.relation]]

    def split_facts(self, split: str = "all") -> list[Fact]:
        """Facts of a split; see the module docstring for what "train" and "eval" hold."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split == "all" or not self._held_out:
            return self.facts()
        want_held = split == "eval"
        return [f for i, f in enumerate(self._facts) if (i in self._held_out) == want_held]

    def qa_examples(self, split: str = "all") -> list[QAExample]:
        return [
            QAExample(
                qid=f"kb{self.seed}-{self._index[(f.entity, f.relation)]:04d}",
                question=self.question(f),
                answers=(f.answer, *f.aliases),
            )
            for f in self.split_facts(split)
        ]

    def __len__(self) -> int:
        return len(self._facts)

    def __repr__(self) -> str:
        return (
            f"KnowledgeBase(num_entities={self.num_entities}, seed={self.seed}, "
            f"facts={len(self._facts)}, held_out={len(self._held_out)})"
        )


# --------------------------------------------------------------------------- QA documents


def qa_prompt(question: str, shot: tuple[str, str] | None = None) -> str:
    """The evaluation prompt; ``shot`` is an optional solved ``(question, answer)`` pair."""
    prefix = f"Question: {shot[0]}\nAnswer: {shot[1]}\n\n" if shot is not None else ""
    return f"{prefix}Question: {question}\nAnswer:"


def qa_documents(kb: KnowledgeBase, seed: int = 0, shots: int = 3) -> list[str]:
    """Language-modelling documents teaching every fact of ``kb`` (see the module docstring).

    Held-out facts contribute statements only, and are never used as a one-shot example.
    """
    rng = random.Random(f"kvpred-qa-docs-{kb.seed}-{seed}")
    facts = kb.facts()
    trained = [f for f in facts if not kb.is_held_out(f)]
    docs: list[str] = []
    for fact in facts:
        statements = kb.statements(fact)
        rng.shuffle(statements)
        paragraph = " ".join(statements)
        if kb.is_held_out(fact):
            docs.append(paragraph + "\n")
            continue
        question = kb.question(fact)
        docs.append(f"{paragraph}\n\n{qa_prompt(question)} {fact.answer}\n")
        docs.append(f"{qa_prompt(question)} {fact.answer}\n")
        others = [f for f in trained if f != fact]
        for _ in range(shots if others else 0):
            shot = rng.choice(others)
            docs.append(f"{qa_prompt(question, (kb.question(shot), shot.answer))} {fact.answer}\n")
    for entity in kb.entities():
        own = [f for f in facts if f.entity == entity]
        sentences = [rng.choice(kb.statements(f)) for f in own]
        rng.shuffle(sentences)
        docs.append(" ".join(sentences) + "\n")
    rng.shuffle(docs)
    return docs


# --------------------------------------------------------------------------- code documents

_SKIP_DIRS = frozenset(
    {
        "__pycache__", "site-packages", "dist-packages", "test", "tests", "idle_test",
        "encodings", "pydoc_data", "lib2to3", "turtledemo",
    }
)  # fmt: skip
MAX_FILE_BYTES = 64_000


def _skip(rel: Path) -> bool:
    if any(p in _SKIP_DIRS or p.startswith("config-") for p in rel.parts[:-1]):
        return True
    name = rel.name
    return name.startswith(("test_", "_sysconfigdata")) or name == "__main__.py"


@functools.lru_cache(maxsize=1)
def _stdlib_candidates() -> tuple[tuple[Path, int], ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if _skip(rel) or not path.is_file():
            continue
        size = path.stat().st_size
        if 0 < size <= MAX_FILE_BYTES:
            found.append((rel.as_posix(), path, size))
    found.sort()
    return tuple((path, size) for _, path, size in found)


def stdlib_files(max_bytes: int = 1_000_000, seed: int = 0) -> list[Path]:
    """A seeded selection of stdlib sources totalling at most ``max_bytes``, sorted by path."""
    candidates = list(_stdlib_candidates())
    random.Random(f"kvpred-code-{seed}").shuffle(candidates)
    chosen, total = [], 0
    for path, size in candidates:
        if total + size > max_bytes:
            continue
        chosen.append(path)
        total += size
    return sorted(chosen)


def _chunks(text: str, chunk_bytes: int) -> list[str]:
    out, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        n = len(line.encode("utf-8"))
        if current and size + n > chunk_bytes:
            out.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += n
    if current:
        out.append("".join(current))
    return [c for c in out if c.strip()]


def code_documents(max_bytes: int = 1_000_000, seed: int = 0, chunk_bytes: int = 4096) -> list[str]:
    """Stdlib source chunks of at most ``chunk_bytes`` (cut at line boundaries)."""
    docs: list[str] = []
    for path in stdlib_files(max_bytes, seed):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        docs.extend(_chunks(text, chunk_bytes))
    return docs


# --------------------------------------------------------------------------- token stream


def _encode_all(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend", None)
    if backend is not None and hasattr(backend, "encode_batch"):
        return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    return [tokenizer.encode(t) for t in texts]


class TokenStream:
    """Packed, padded language-modelling batches; ``batch(step)`` depends on ``step`` only."""

    def __init__(
        self,
        tokenizer: Any,
        documents: Mapping[str, Sequence[str]],
        weights: Mapping[str, float] | None = None,
        seq_len: int = 128,
        batch_size: int = 32,
        seed: int = 0,
    ) -> None:
        if tokenizer.bos_id is None or tokenizer.eos_id is None or tokenizer.pad_id is None:
            raise ValueError("the tokenizer needs BOS, EOS and pad tokens")
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"bad shape: seq_len={seq_len}, batch_size={batch_size}")
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.pad_id = int(tokenizer.pad_id)
        bos, eos = int(tokenizer.bos_id), int(tokenizer.eos_id)
        self.sources: list[str] = []
        self._docs: list[list[np.ndarray]] = []
        for name, texts in documents.items():
            if weights is not None and weights.get(name, 0.0) <= 0.0:
                continue
            if not texts:
                raise ValueError(f"source {name!r} has no documents")
            ids = _encode_all(tokenizer, texts)
            self.sources.append(name)
            self._docs.append([np.asarray([bos, *d, eos], dtype=np.int32) for d in ids])
        if weights is not None:
            unknown = set(weights) - set(documents)
            if unknown:
                raise ValueError(f"weights for unknown sources: {sorted(unknown)}")
            raw = [float(weights[name]) for name in self.sources]
        else:
            raw = [float(sum(len(d) for d in docs)) for docs in self._docs]
        if not self.sources or sum(raw) <= 0:
            raise ValueError("no source with positive weight")
        self.weights = {name: w / sum(raw) for name, w in zip(self.sources, raw)}
        self._cum = np.cumsum(raw) / sum(raw)

    @property
    def num_tokens(self) -> dict[str, int]:
        """Tokens per source, counting each document's BOS and EOS."""
        return {n: int(sum(len(d) for d in docs)) for n, docs in zip(self.sources, self._docs)}

    def batch(self, step: int) -> dict[str, np.ndarray]:
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        rng = np.random.default_rng([self.seed, step])
        length = self.seq_len + 1
        tokens = np.full((self.batch_size, length), self.pad_id, dtype=np.int32)
        segments = np.zeros((self.batch_size, length), dtype=np.int32)
        sources = np.searchsorted(self._cum, rng.random(self.batch_size), side="right")
        for row, source in enumerate(sources):
            docs = self._docs[min(int(source), len(self._docs) - 1)]
            pos, segment = 0, 0
            while pos < length:
                doc = docs[int(rng.integers(len(docs)))]
                room = length - pos
                segment += 1
                if len(doc) <= room:
                    tokens[row, pos : pos + len(doc)] = doc
                    segments[row, pos : pos + len(doc)] = segment
                    pos += len(doc)
                elif len(doc) > length:  # a long document: a random window fills the row
                    start = int(rng.integers(len(doc) - room + 1))
                    tokens[row, pos:] = doc[start : start + room]
                    segments[row, pos:] = segment
                    pos = length
                else:  # the next document does not fit: pad the rest
                    break
        return {
            "tokens": tokens,
            "inputs": tokens[:, :-1],
            "targets": tokens[:, 1:],
            "mask": (segments[:, 1:] > 0).astype(np.float32),
            "segment_ids": segments[:, :-1],
        }
