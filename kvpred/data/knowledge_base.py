"""A deterministic synthetic closed-book QA world: facts, questions, statements, splits.

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
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kvpred.data.names import (
    CITY_PREFIXES,
    COUNTRY_SUFFIXES,
    LANGUAGE_SUFFIXES,
    PROFESSIONS,
    Names,
    article,
    kind_counts,
)
from kvpred.data.templates import PERSON_RELATIONS, QUESTIONS, STATEMENTS, stable_index
from kvpred.tasks.triviaqa import QAExample

SPLITS = ("all", "train", "eval")
FORBIDDEN_IN_ANSWER = (".", ",", "\n")


@dataclass(frozen=True)
class Fact:
    entity: str
    relation: str
    answer: str
    aliases: tuple[str, ...]


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
        names = Names(rng)
        counts = kind_counts(self.num_entities)
        countries = [names.fresh(2, 2, COUNTRY_SUFFIXES) for _ in range(counts["country"])]
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
            add(person, "person", "profession", job, f"{article(job)} {job}", job.capitalize())
            add(person, "person", "birth_year", year, f"in {year}")
        for country in countries:
            own = [c for c in cities if city_country[c] == country]
            capital = own[0] if own else self._city_name(names, rng)
            currency = names.fresh(2, 2)
            language = names.fresh(1, 2, LANGUAGE_SUFFIXES)
            add(country, "country", "capital", capital, *self._city_aliases(capital))
            add(country, "country", "currency", currency, f"the {currency}", f"{currency}s")
            add(
                country,
                "country",
                "language",
                language,
                f"{language} language",
                f"the {language} language",
            )
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
    def _city_name(names: Names, rng: random.Random) -> str:
        word = names.fresh(2, 3)
        return f"{rng.choice(CITY_PREFIXES)} {word}" if rng.random() < 0.25 else word

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
        fields = {"e": fact.entity, "a": fact.answer, "art": article(fact.answer)}
        if fact.relation in PERSON_RELATIONS:
            job = self._by_entity[fact.entity]["profession"].answer
            fields.update(job=job, art_job=article(job))
        return fields

    def question(self, fact: Fact) -> str:
        templates = QUESTIONS[fact.relation]
        template = templates[stable_index(len(templates), self.seed, fact.entity, fact.relation)]
        return template.format(**self._fields(fact))

    def statements(self, fact: Fact) -> list[str]:
        fields = self._fields(fact)
        return [template.format(**fields) for template in STATEMENTS[fact.relation]]

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
