"""The built-in demo data: deterministic, disjoint splits, checkable answers."""

import json

import pytest

from tuneserve.data.demo import TASKS, demo_samples
from tuneserve.evals import is_exact_match


@pytest.mark.parametrize("task", list(TASKS))
def test_held_out_prompts_never_appear_in_train(task):
    train, held_out = demo_samples(task, "train"), demo_samples(task, "held_out")
    assert len(train) == 400 and len(held_out) == 100
    assert not {s.prompt for s in train} & {s.prompt for s in held_out}


@pytest.mark.parametrize("task", list(TASKS))
def test_generation_is_deterministic_and_wrong_answers_differ(task):
    assert demo_samples(task, "train") == demo_samples(task, "train")
    assert all(s.answer != s.wrong for s in demo_samples(task, "held_out"))


def test_answers_are_correct():
    for s in demo_samples("arithmetic", "train")[:20]:
        a, b = [int(x) for x in s.prompt.removeprefix("What is ").split("?")[0].split(" + ")]
        assert int(s.answer) == a + b
    for s in demo_samples("extract", "train")[:20]:
        data = json.loads(s.answer)
        assert data["name"] in s.prompt and str(data["age"]) in s.prompt


def test_exact_match_ignores_whitespace_and_json_spacing():
    assert is_exact_match(" 2023-07-14\n", "2023-07-14")
    assert is_exact_match('{"name":"Tom","age": 4}', '{"name": "Tom", "age": 4}')
    assert not is_exact_match('{"name": "Tom", "age": "4"}', '{"name": "Tom", "age": 4}')
    assert not is_exact_match("2023-07-15", "2023-07-14")


def test_spread_takes_rows_evenly_from_every_part():
    from tuneserve.data import spread

    assert spread(list(range(12)), 4) == [0, 3, 6, 9]
    assert spread(list(range(3)), 5) == [0, 1, 2]
    assert {s.task for s in spread([s for t in ("dates", "units") for s in demo_samples(t, "train")], 10)} == {"dates", "units"}
