"""A synthetic code task a tiny model can learn, in HumanEval's exact format.

Each problem is a small Python function built from one family's steps (integer arithmetic,
list, string or dict transformations), one or two of them in a row, then a final step that
says what to return. The docstring states the steps in words, one a line, and shows one call
with its result; the canonical solution is one statement per step:

    def lists_17(xs: list[int]) -> int:
        \"\"\"Keep only the numbers greater than 3.
        Add 2 to every number.
        Return the sum of the numbers.
        >>> lists_17([1, 5, 4])
        13
        \"\"\"
        xs = [v for v in xs if v > 3]
        xs = [v + 2 for v in xs]
        return sum(xs)

A problem's *composition* is its family, its steps' kinds in order and its final step's kind
(constants aside). A fixed, seeded fifth of the compositions of two or more steps is held out:
the "train" split never contains them, the "heldout" split contains only them, so every
held-out problem combines steps the training data shows only in other combinations.

    make_problems(split, n, seed)   -> n HumanEval problems (task_id, prompt,
                                       canonical_solution, test, entry_point)
    train_documents(n, seed)        -> prompt + canonical solution texts, for language modelling
    write_jsonl(problems, path)     -> a file `load_humaneval` (and --task=humaneval:PATH) reads
    composition(problem)            -> the problem's composition key
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from collections.abc import Callable, Sequence

SPLITS = ("train", "heldout")
HELDOUT_SHARE = 0.2  # of the compositions of two or more steps
MAX_STEPS = 2
NUM_TESTS = 5
DEFAULT_HELDOUT = 164  # as many problems as HumanEval
SPLIT_SEED = 0  # which compositions are held out; fixed so that every split agrees

_LETTERS = "abcdefghij"
_WORDS = ("ab", "cd", "xy", "ok", "zz", "no", "hi", "yo")
_KEYS = ("apple", "bird", "cat", "dog", "echo", "fig", "gold", "hat", "ink", "jam")


@dataclasses.dataclass(frozen=True)
class Step:
    kind: str
    text: str  # the docstring line; "{c}" / "{a}" / "{b}" are filled with constants
    code: str  # the statement, the same placeholders
    consts: Callable[[random.Random], dict] = lambda r: {}


def _num(lo, hi):
    return lambda r: {"c": r.randint(lo, hi)}


def _char(r):
    return {"a": r.choice(_LETTERS)}


def _two_chars(r):
    a, b = r.sample(_LETTERS, 2)
    return {"a": a, "b": b}


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    var: str
    arg_type: str
    steps: tuple[Step, ...]
    finals: tuple[tuple[Step, str], ...]  # (the final step, its return type)
    inputs: Callable[[random.Random], object]


FAMILIES = (
    Family(
        "ints",
        "x",
        "int",
        (
            Step("add", "Add {c} to x.", "x = x + {c}", _num(1, 9)),
            Step("sub", "Subtract {c} from x.", "x = x - {c}", _num(1, 9)),
            Step("mul", "Multiply x by {c}.", "x = x * {c}", _num(2, 9)),
            Step("div", "Divide x by {c}, rounding down.", "x = x // {c}", _num(2, 9)),
            Step("mod", "Take x modulo {c}.", "x = x % {c}", _num(2, 9)),
            Step("square", "Square x.", "x = x * x"),
            Step("neg", "Negate x.", "x = -x"),
            Step("abs", "Take the absolute value of x.", "x = abs(x)"),
            Step("atleast", "Make x at least {c}.", "x = max(x, {c})", _num(0, 9)),
        ),
        ((Step("ret", "Return x.", "return x"), "int"),),
        lambda r: r.randint(-20, 20),
    ),
    Family(
        "lists",
        "xs",
        "list[int]",
        (
            Step("even", "Keep only the even numbers.", "xs = [v for v in xs if v % 2 == 0]"),
            Step("odd", "Keep only the odd numbers.", "xs = [v for v in xs if v % 2 == 1]"),
            Step(
                "gt",
                "Keep only the numbers greater than {c}.",
                "xs = [v for v in xs if v > {c}]",
                _num(0, 9),
            ),
            Step(
                "lt",
                "Keep only the numbers less than {c}.",
                "xs = [v for v in xs if v < {c}]",
                _num(0, 9),
            ),
            Step("addeach", "Add {c} to every number.", "xs = [v + {c} for v in xs]", _num(1, 9)),
            Step(
                "muleach",
                "Multiply every number by {c}.",
                "xs = [v * {c} for v in xs]",
                _num(2, 9),
            ),
            Step("sort", "Sort the numbers in ascending order.", "xs = sorted(xs)"),
            Step(
                "sortdesc",
                "Sort the numbers in descending order.",
                "xs = sorted(xs, reverse=True)",
            ),
            Step("reverse", "Reverse the list.", "xs = xs[::-1]"),
            Step("drop", "Drop the first {c} numbers.", "xs = xs[{c}:]", _num(1, 3)),
            Step("take", "Keep the first {c} numbers.", "xs = xs[:{c}]", _num(1, 4)),
        ),
        (
            (Step("ret", "Return the list.", "return xs"), "list[int]"),
            (Step("sum", "Return the sum of the numbers.", "return sum(xs)"), "int"),
            (Step("len", "Return how many numbers are left.", "return len(xs)"), "int"),
        ),
        lambda r: [r.randint(-9, 12) for _ in range(r.randint(3, 7))],
    ),
    Family(
        "strings",
        "s",
        "str",
        (
            Step("upper", "Convert s to upper case.", "s = s.upper()"),
            Step("lower", "Convert s to lower case.", "s = s.lower()"),
            Step("reverse", "Reverse s.", "s = s[::-1]"),
            Step("nospace", "Remove every space from s.", 's = s.replace(" ", "")'),
            Step(
                "replace",
                "Replace every '{a}' in s with '{b}'.",
                's = s.replace("{a}", "{b}")',
                _two_chars,
            ),
            Step(
                "append", "Append '{a}' to s.", 's = s + "{a}"', lambda r: {"a": r.choice(_WORDS)}
            ),
            Step(
                "prepend",
                "Put '{a}' in front of s.",
                's = "{a}" + s',
                lambda r: {"a": r.choice(_WORDS)},
            ),
            Step("take", "Keep the first {c} characters of s.", "s = s[:{c}]", _num(1, 6)),
            Step("strip", "Strip the spaces at both ends of s.", "s = s.strip()"),
        ),
        (
            (Step("ret", "Return s.", "return s"), "str"),
            (Step("len", "Return the length of s.", "return len(s)"), "int"),
            (
                Step(
                    "count",
                    "Return how many times '{a}' occurs in s.",
                    'return s.count("{a}")',
                    _char,
                ),
                "int",
            ),
        ),
        lambda r: "".join(r.choice(_LETTERS + "  ") for _ in range(r.randint(4, 9))),
    ),
    Family(
        "dicts",
        "d",
        "dict[str, int]",
        (
            Step(
                "addval",
                "Add {c} to every value.",
                "d = {k: v + {c} for k, v in d.items()}",
                _num(1, 9),
            ),
            Step(
                "mulval",
                "Multiply every value by {c}.",
                "d = {k: v * {c} for k, v in d.items()}",
                _num(2, 9),
            ),
            Step(
                "gt",
                "Keep only the entries whose value is greater than {c}.",
                "d = {k: v for k, v in d.items() if v > {c}}",
                _num(0, 9),
            ),
            Step(
                "prefix",
                "Keep only the entries whose key starts with '{a}'.",
                'd = {k: v for k, v in d.items() if k.startswith("{a}")}',
                lambda r: {"a": r.choice(_KEYS)[0]},
            ),
            Step("upper", "Make every key upper case.", "d = {k.upper(): v for k, v in d.items()}"),
            Step(
                "dropkey",
                "Remove the key '{a}'.",
                'd = {k: v for k, v in d.items() if k != "{a}"}',
                lambda r: {"a": r.choice(_KEYS)},
            ),
        ),
        (
            (Step("ret", "Return the dictionary.", "return d"), "dict[str, int]"),
            (Step("sum", "Return the sum of the values.", "return sum(d.values())"), "int"),
            (Step("keys", "Return the keys in sorted order.", "return sorted(d)"), "list[str]"),
            (Step("len", "Return the number of entries.", "return len(d)"), "int"),
        ),
        lambda r: {k: r.randint(-5, 12) for k in r.sample(_KEYS, r.randint(2, 5))},
    ),
)
_BY_NAME = {f.name: f for f in FAMILIES}


def _hash01(text: str) -> float:
    digest = hashlib.sha256(f"{SPLIT_SEED}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def composition_key(family: str, kinds: Sequence[str], final: str) -> str:
    return f"{family}:{'+'.join(kinds)}->{final}"


def composition(problem: dict) -> str:
    """The composition key a generated problem records."""
    return problem["composition"]


def is_heldout(key: str) -> bool:
    """Whether a composition belongs to the held-out split (two or more steps, a fixed share)."""
    return "+" in key and _hash01(key) < HELDOUT_SHARE


def _sample_composition(r: random.Random, split: str):
    while True:
        fam = r.choice(FAMILIES)
        steps = []
        for _ in range(r.randint(1, MAX_STEPS)):
            choices = [s for s in fam.steps if not steps or s.kind != steps[-1].kind]
            steps.append(r.choice(choices))
        final, ret = r.choice(fam.finals)
        key = composition_key(fam.name, [s.kind for s in steps], final.kind)
        if is_heldout(key) == (split == "heldout"):
            return fam, steps, final, ret, key


def _fill(template: str, consts: dict) -> str:
    out = template
    for name, value in consts.items():
        out = out.replace("{" + name + "}", str(value))
    return out


def _build(r: random.Random, split: str, index: int) -> dict | None:
    fam, steps, final, ret, key = _sample_composition(r, split)
    lines, code = [], []
    for step in (*steps, final):
        consts = step.consts(r)
        lines.append(_fill(step.text, consts))
        code.append(_fill(step.code, consts))
    name = f"{fam.name}_{index}"
    body = "".join(f"    {c}\n" for c in code)
    fn = _define(name, fam.var, code)
    cases, seen = [], set()
    for _ in range(8 * NUM_TESTS):
        arg = fam.inputs(r)
        if repr(arg) in seen:
            continue
        seen.add(repr(arg))
        cases.append((arg, fn(_copy(arg))))
        if len(cases) == NUM_TESTS:
            break
    if len({repr(out) for _, out in cases}) < 2:  # a constant function tests nothing
        return None
    for i in range(len(steps)):  # the tests must see every step: without it, some case fails
        ablated = _define(name, fam.var, code[:i] + code[i + 1 :])
        if all(repr(_safe(ablated, arg)) == repr(out) for arg, out in cases):
            return None
    shown_arg, shown_out = cases[0]
    doc = "".join(f"    {ln}\n" for ln in lines)
    prompt = (
        f"def {name}({fam.var}: {fam.arg_type}) -> {ret}:\n"
        f'    """{doc[4:]}'
        f"    >>> {name}({shown_arg!r})\n"
        f"    {shown_out!r}\n"
        f'    """\n'
    )
    test = "\n\nMETADATA = {}\n\n\ndef check(candidate):\n" + "".join(
        f"    assert candidate({a!r}) == {o!r}\n" for a, o in cases
    )
    return {
        "task_id": f"SyntheticCode/{split}/{index}",
        "prompt": prompt,
        "canonical_solution": body,
        "test": test,
        "entry_point": name,
        "composition": key,
    }


def _define(name: str, var: str, code: Sequence[str]):
    namespace: dict = {}
    exec(f"def {name}({var}):\n" + "".join(f"    {c}\n" for c in code), namespace)  # ours
    return namespace[name]


def _safe(fn, arg):
    try:
        return fn(_copy(arg))
    except Exception as e:  # a step left out can break the next one
        return e


def _copy(value):
    return type(value)(value) if isinstance(value, list | dict) else value


def make_problems(split: str, n: int, seed: int = 0) -> list[dict]:
    """`n` problems of `split` ("train" or "heldout"); the same arguments, the same problems.
    Raises ValueError on an unknown split or a negative n."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    r = random.Random(f"{seed}:{split}")
    out: list[dict] = []
    while len(out) < n:
        problem = _build(r, split, len(out))
        if problem is not None:
            out.append(problem)
    return out


def train_documents(n: int = 20_000, seed: int = 0) -> list[str]:
    """Training texts: each train problem's prompt followed by its canonical solution."""
    return [p["prompt"] + p["canonical_solution"] for p in make_problems("train", n, seed)]


def write_jsonl(problems: Sequence[dict], path: str | os.PathLike) -> str:
    """Write problems one JSON object a line, as HumanEval.jsonl; returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p) + "\n")
    return path
