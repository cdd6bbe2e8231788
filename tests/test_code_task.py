"""The synthetic code task: HumanEval's format, checked as HumanEval is, held out by
composition, and read back through `--task=humaneval:PATH`."""

from __future__ import annotations

import pytest

from kvpred.data import code_task as ct
from kvpred.tasks import check_completion, evaluate, load_humaneval, make_task
from kvpred.tasks.humaneval import model_prompt


def _passes(problem: dict, completion: str) -> bool:
    """Run prompt + completion + test in process (the generated code is ours)."""
    ns: dict = {}
    try:
        exec(problem["prompt"] + completion + "\n" + problem["test"], ns)
        ns["check"](ns[problem["entry_point"]])
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def heldout():
    return ct.make_problems("heldout", ct.DEFAULT_HELDOUT)


@pytest.fixture(scope="module")
def train():
    return ct.make_problems("train", 3000)


def test_problems_have_humaneval_fields_and_layout(heldout):
    p = heldout[0]
    assert {"task_id", "prompt", "canonical_solution", "test", "entry_point"} <= set(p)
    assert p["prompt"].startswith(f"def {p['entry_point']}(")
    assert p["prompt"].endswith('    """\n') and f"    >>> {p['entry_point']}(" in p["prompt"]
    assert "def check(candidate):" in p["test"]
    assert len({q["task_id"] for q in heldout}) == len(heldout) == 164
    assert len({q["entry_point"] for q in heldout}) == len(heldout)
    assert {q["composition"].split(":")[0] for q in heldout} == {f.name for f in ct.FAMILIES}
    # the model's prompt loses only the trailing newline
    assert model_prompt(p) + "\n" == p["prompt"]


def test_every_canonical_solution_passes_and_a_wrong_one_fails(heldout, train):
    for p in heldout + train[:500]:
        assert _passes(p, p["canonical_solution"]), p["task_id"]
        assert not _passes(p, "    return None\n"), p["task_id"]
        # dropping the first step changes some tested result, or the step tested nothing
        lines = p["canonical_solution"].splitlines(keepends=True)
        if len(lines) > 1 and _passes(p, "".join(lines[1:])):
            pytest.fail(f"{p['task_id']}: its tests do not see its first step")


def test_canonical_solutions_pass_the_sandboxed_runner(heldout):
    few = heldout[:3]
    res = evaluate(few, {p["task_id"]: [p["canonical_solution"]] for p in few})
    assert res["pass_at_k"] == {"pass@1": 1.0}
    r = check_completion(few[0], "    return None\n")
    assert r["result"] == "failed: AssertionError"


def test_heldout_compositions_never_appear_in_training(heldout, train):
    train_keys = {p["composition"] for p in train}
    held_keys = {p["composition"] for p in heldout}
    assert not train_keys & held_keys
    assert all("+" in k for k in held_keys)  # two or more steps each
    assert all(ct.is_heldout(k) for k in held_keys) and not any(map(ct.is_heldout, train_keys))
    # ...while each of their steps and final steps is seen in training, in other compositions
    seen = {
        (k.split(":")[0], s) for k in train_keys for s in k.split(":")[1].split("->")[0].split("+")
    }
    for k in held_keys:
        fam, rest = k.split(":")
        assert all((fam, s) in seen for s in rest.split("->")[0].split("+")), k
    docs = ct.train_documents(200)
    assert docs[0] == train[0]["prompt"] + train[0]["canonical_solution"]
    held_fns = {p["canonical_solution"] for p in heldout}
    assert not held_fns & {p["canonical_solution"] for p in train}


def test_generation_is_deterministic_and_checks_its_arguments():
    assert ct.make_problems("heldout", 5) == ct.make_problems("heldout", 5)
    assert ct.make_problems("heldout", 5, seed=1) != ct.make_problems("heldout", 5)
    with pytest.raises(ValueError, match="split"):
        ct.make_problems("test", 3)
    with pytest.raises(ValueError, match="n must be"):
        ct.make_problems("train", -1)


def test_jsonl_round_trip_through_the_tasks(heldout, tmp_path):
    path = ct.write_jsonl(heldout[:10], tmp_path / "sub" / "code.jsonl")
    assert load_humaneval(path) == heldout[:10]
    assert make_task(f"humaneval:{path}").load() == heldout[:10]
    assert make_task("synthetic_code").load(4) == heldout[:4]
    make_task("synthetic_code").write_extras(heldout[:2], tmp_path)
    assert load_humaneval(tmp_path / "synthetic_code.jsonl") == heldout[:2]
    with pytest.raises(ValueError, match="humaneval needs an argument"):
        make_task("humaneval:")
    with pytest.raises(ValueError, match="synthetic_code takes no argument"):
        make_task("synthetic_code:x")


def test_training_streams_draw_the_code_task_train_split(monkeypatch):
    from jaxserve.tokenizer import load_default
    from kvpred import recipes

    monkeypatch.setattr(recipes, "CODE_TASK_DOCUMENTS", 50)
    tok = load_default()
    batch = recipes.make_stream(tok, "synthetic_code", seq_len=192, batch_size=4)(0)
    text = tok.decode([int(t) for t in batch["inputs"][0] if t > 2])
    assert any(text.startswith(d) for d in ct.train_documents(50)), text
    assert recipes.parse_data_spec("synthetic_qa:0.5,synthetic_code:0.4,stdlib_code:0.1") == {
        "synthetic_qa": 0.5,
        "synthetic_code": 0.4,
        "stdlib_code": 0.1,
    }
    with pytest.raises(ValueError, match="synthetic_cod"):
        recipes.parse_data_spec("synthetic_cod:1")


def test_greedy_pass_at_1_and_sampled_pass_at_k_are_scored_apart(heldout):
    from kvpred.tasks import TaskOptions

    task = make_task("synthetic_code", TaskOptions(samples=3, temperature=0.8))
    greedy, sampled = task.generations()
    assert greedy.params.temperature == 0 and greedy.samples == 1
    assert sampled.params.temperature == 0.8 and sampled.samples == 3
    assert task.prompts(heldout[:1]) == [heldout[0]["prompt"].rstrip()]
    p, q = heldout[:2]
    right = lambda x: "\n" + x["canonical_solution"] + "\n\ndef more():\n"  # noqa: E731
    wrong = "\n    return None\n"
    # greedy first, then the samples: p greedy right, 1 of 3 samples right; q greedy wrong,
    # 3 of 3 samples right
    texts = [[right(p), wrong, right(p), wrong], [wrong, right(q), right(q), right(q)]]
    score, records = task.score([p, q], texts)
    assert score == 0.5 and [r["correct"] for r in records] == [1, 0]
    assert [(r["sampled_n"], r["sampled_correct"]) for r in records] == [(3, 1), (3, 3)]
    assert records[0]["completions"] == ["\n" + p["canonical_solution"] + "\n"]  # cut
    extra = task.extra_metrics(records)
    # pass@1 = mean(c/n); pass@2 = mean(1 - C(n-c, 2)/C(n, 2)) = mean(1 - 1/3, 1)
    assert extra == pytest.approx({"sampled_pass@1": (1 / 3 + 1) / 2, "sampled_pass@2": 5 / 6})
    # greedy only: no sampled figures
    plain = make_task("synthetic_code")
    assert len(plain.generations()) == 1
    _, records = plain.score([p], [[right(p)]])
    assert plain.extra_metrics(records) == {}
    with pytest.raises(ValueError, match="temperature"):
        make_task("synthetic_code", TaskOptions(samples=2, temperature=0)).generations()
