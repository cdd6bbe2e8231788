"""The sentences of the synthetic world: question and statement templates per relation.

One question template is picked per fact, from a hash of (seed, entity, relation)
(`stable_index`); every statement template states the fact once.
"""

from __future__ import annotations

import zlib

from kvpred.data.names import RELATIONS

# Question templates per relation. Fields: {e} entity (display form), {job} a person's
# profession. One template is picked per fact, from a hash of (seed, entity, relation).
QUESTIONS = {
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
STATEMENTS = {
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
PERSON_RELATIONS = frozenset(RELATIONS["person"])


def stable_index(n: int, *parts: object) -> int:
    return zlib.crc32("|".join(str(p) for p in parts).encode()) % n
