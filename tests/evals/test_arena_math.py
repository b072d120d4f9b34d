"""Elo and Bradley-Terry on hand-made votes, with the values worked out by hand."""

import math

import pytest

from tuneserve.evals.arena import ArenaStore, Vote, bootstrap_intervals, bradley_terry, elo_ratings, leaderboard


def votes(*triples: str) -> list[Vote]:
    return [Vote(*t.split()) for t in triples]


def test_elo_one_win_moves_each_side_by_half_of_k():
    assert elo_ratings(votes("x y a")) == {"x": 1002.0, "y": 998.0}
    assert elo_ratings(votes("x y b")) == {"x": 998.0, "y": 1002.0}


def test_elo_a_tie_between_equals_changes_nothing_and_a_later_tie_pulls_together():
    assert elo_ratings(votes("x y tie")) == {"x": 1000.0, "y": 1000.0}
    after = elo_ratings(votes("x y a", "x y tie"))
    expected_x = 1 / (1 + 10 ** ((998 - 1002) / 400))  # x's win probability after its win
    assert after["x"] == pytest.approx(1002 + 4 * (0.5 - expected_x))
    assert after["y"] == pytest.approx(998 - 4 * (0.5 - expected_x))
    assert after["y"] < after["x"] < 1002


def test_elo_depends_on_order_bradley_terry_does_not():
    forward, backward = votes("x y a", "x y b", "x y a"), votes("x y a", "x y a", "x y b")
    assert elo_ratings(forward) != elo_ratings(backward)
    assert bradley_terry(forward) == pytest.approx(bradley_terry(backward))


def test_bradley_terry_three_wins_in_four_is_log10_3_times_400_apart():
    ratings = bradley_terry(votes("x y a", "x y a", "x y a", "y x a"))
    assert ratings["x"] - ratings["y"] == pytest.approx(400 * math.log10(3), abs=0.5)
    assert ratings["x"] + ratings["y"] == pytest.approx(2000)


def test_bradley_terry_ties_count_half_a_win_each():
    assert bradley_terry(votes("x y tie", "x y both_bad")) == pytest.approx({"x": 1000.0, "y": 1000.0})
    # 1 win + 2 ties = 2 of 3 "points": P(x beats y) = 2/3
    ratings = bradley_terry(votes("x y a", "x y tie", "y x tie"))
    assert ratings["x"] - ratings["y"] == pytest.approx(400 * math.log10(2), abs=0.5)


def test_a_clear_winner_stays_finite_and_ranks_first_with_separated_intervals():
    clear = votes(*["champ x a"] * 10, *["y champ b"] * 10, *["x y a", "x y b", "x y tie"])
    ratings = bradley_terry(clear)
    assert all(math.isfinite(r) for r in ratings.values())
    assert ratings["champ"] - max(ratings["x"], ratings["y"]) > 800
    assert ratings["x"] == pytest.approx(ratings["y"])
    intervals = bootstrap_intervals(clear, rounds=100)
    assert intervals["champ"][0] > max(intervals["x"][1], intervals["y"][1])
    board = leaderboard(clear, rounds=50)
    assert board[0]["model"] == "champ" and board[0]["wins"] == 20 and board[0]["losses"] == 0
    assert {r["model"]: r["ties"] for r in board} == {"champ": 0, "x": 1, "y": 1}


def test_bradley_terry_is_transitive_across_models_that_never_met():
    ratings = bradley_terry(votes(*["a b a"] * 3, "a b b", *["b c a"] * 3, "b c b"))
    assert ratings["a"] > ratings["b"] > ratings["c"]
    assert ratings["a"] - ratings["b"] == pytest.approx(ratings["b"] - ratings["c"], abs=1)


def test_store_keeps_votes_across_reopening_and_refuses_a_second_vote(tmp_path):
    store = ArenaStore(tmp_path / "arena.sqlite")
    first = store.create([{"role": "user", "content": "hi"}], "x", "y", "hello", "hey", owner="t")
    second = store.create([{"role": "user", "content": "yo"}], "y", "x", "sup", "yo", owner="t")
    assert store.vote(first, "a") and not store.vote(first, "b")
    assert store.vote(second, "tie", judge="exact")
    with pytest.raises(ValueError, match="winner must be one of"):
        store.vote(second, "x")
    store.close()
    reopened = ArenaStore(tmp_path / "arena.sqlite")
    assert reopened.votes() == [Vote("x", "y", "a"), Vote("y", "x", "tie")]
    assert reopened.votes(judge="exact") == [Vote("y", "x", "tie")]
    assert reopened.get(first)["answer_b"] == "hey"


def test_open_battles_are_capped_per_owner_and_expire_unvoted(tmp_path, monkeypatch):
    from tuneserve.evals import arena

    store = ArenaStore(tmp_path / "arena.sqlite")
    voted = store.create([], "x", "y", "a", "b", owner="k", max_open_per_owner=3)
    store.vote(voted, "a")
    ids = [store.create([], "x", "y", "a", "b", owner="k", max_open_per_owner=3) for _ in range(5)]
    other = store.create([], "x", "y", "a", "b", owner="other", max_open_per_owner=3)
    assert [store.get(i) is not None for i in ids] == [False, False, True, True, True]  # the oldest two went
    assert store.get(voted) is not None and store.get(other) is not None  # votes and other owners' battles stay
    now = arena.time.time()
    monkeypatch.setattr(arena.time, "time", lambda: now + arena.OPEN_BATTLE_TTL_S + 1)
    store.create([], "x", "y", "a", "b", owner="k")
    assert all(store.get(i) is None for i in ids + [other]) and store.get(voted) is not None
