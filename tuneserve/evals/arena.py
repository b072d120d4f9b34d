"""The arena: anonymous side-by-side battles, votes stored in SQLite, ratings as LMSYS computes them.

- Elo: online updates in vote order (K=4, base 10, scale 400, start 1000), as Chatbot Arena's
  `compute_online_elo`.
- Bradley-Terry: the maximum-likelihood ratings of a logistic model over all votes, as Chatbot
  Arena's `compute_mle_elo` (ties count as half a win for each side), on the Elo scale, with
  bootstrap confidence intervals (votes resampled with replacement). A weak L2 prior keeps
  ratings finite when a model has never lost.
Winners: "a", "b", "tie" or "both_bad" (a tie too, for the ratings).

The server's playground (`/playground`) and `/v1/arena/*` routes, and `tuneserve eval arena`
(automatic judges), all write and read through `ArenaStore`.
"""

import json
import math
import random
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tuneserve.config import bearer_headers
from tuneserve.errors import UserError
from tuneserve.evals.classifier import Classifier
from tuneserve.evals.scoring import is_correct

WINNERS = ("a", "b", "tie", "both_bad")
OPEN_BATTLE_TTL_S = 24 * 3600  # a battle not voted on within a day is dropped
INIT, SCALE, BASE, K = 1000.0, 400.0, 10.0, 4.0


@dataclass(frozen=True, slots=True)
class Vote:
    model_a: str
    model_b: str
    winner: str


def elo_ratings(votes: list[Vote], k: float = K) -> dict[str, float]:
    ratings: dict[str, float] = {}
    for v in votes:
        ra, rb = ratings.setdefault(v.model_a, INIT), ratings.setdefault(v.model_b, INIT)
        expected_a = 1 / (1 + BASE ** ((rb - ra) / SCALE))
        score_a = {"a": 1.0, "b": 0.0}.get(v.winner, 0.5)
        ratings[v.model_a] = ra + k * (score_a - expected_a)
        ratings[v.model_b] = rb + k * (expected_a - score_a)
    return ratings


def bradley_terry(votes: list[Vote], l2: float = 1e-3, iterations: int = 50) -> dict[str, float]:
    """Maximum-likelihood Bradley-Terry ratings on the Elo scale (mean 1000), by Newton's method.

    Each vote is a logistic observation: P(a beats b) = 1 / (1 + 10^((R_b - R_a) / 400)).
    """
    import numpy as np

    models = sorted({m for v in votes for m in (v.model_a, v.model_b)})
    if not models:
        return {}
    index = {m: i for i, m in enumerate(models)}
    rows, ys, weights = [], [], []
    for v in votes:
        x = np.zeros(len(models))
        x[index[v.model_a]], x[index[v.model_b]] = 1.0, -1.0
        if v.winner in ("a", "b"):
            rows.append(x), ys.append(1.0 if v.winner == "a" else 0.0), weights.append(1.0)
        else:  # a tie: half a win each
            rows += [x, x]
            ys += [1.0, 0.0]
            weights += [0.5, 0.5]
    X, y, w = np.array(rows) * math.log(BASE), np.array(ys), np.array(weights)
    beta = np.zeros(len(models))
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-X @ beta))
        gradient = X.T @ (w * (p - y)) + l2 * beta
        hessian = (X * (w * p * (1 - p))[:, None]).T @ X + l2 * np.eye(len(models))
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < 1e-9:
            break
    beta -= beta.mean()
    return {m: INIT + SCALE * float(beta[i]) for m, i in index.items()}


def bootstrap_intervals(votes: list[Vote], rounds: int = 200, seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Per model, the (low, high) percentiles of its Bradley-Terry rating over resampled votes."""
    import numpy as np

    rng = random.Random(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        for model, rating in bradley_terry([rng.choice(votes) for _ in votes]).items():
            samples.setdefault(model, []).append(rating)
    tail = (1 - level) / 2 * 100
    return {m: (float(np.percentile(r, tail)), float(np.percentile(r, 100 - tail))) for m, r in samples.items()}


def leaderboard(votes: list[Vote], rounds: int = 200) -> list[dict]:
    """One row per model, best Bradley-Terry rating first."""
    bt, elo = bradley_terry(votes), elo_ratings(votes)
    intervals = bootstrap_intervals(votes, rounds) if votes else {}
    rows = []
    for model in bt:
        mine = [v for v in votes if model in (v.model_a, v.model_b)]
        wins = sum((v.winner == "a" and v.model_a == model) or (v.winner == "b" and v.model_b == model) for v in mine)
        ties = sum(v.winner in ("tie", "both_bad") for v in mine)
        low, high = intervals.get(model, (bt[model], bt[model]))
        rows.append({"model": model, "bradley_terry": round(bt[model], 1), "ci_low": round(low, 1), "ci_high": round(high, 1),
                     "elo": round(elo[model], 1), "battles": len(mine), "wins": wins, "ties": ties, "losses": len(mine) - wins - ties})
    rows.sort(key=lambda r: -r["bradley_terry"])
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


class ArenaStore:
    """Battles and votes in one SQLite file (WAL, a commit per write: a vote survives a crash)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS battles (id TEXT PRIMARY KEY, created REAL NOT NULL, owner TEXT, prompt TEXT NOT NULL, "
            "model_a TEXT NOT NULL, model_b TEXT NOT NULL, answer_a TEXT NOT NULL, answer_b TEXT NOT NULL, "
            "winner TEXT, judge TEXT, voted REAL)"
        )

    def create(self, prompt: list[dict], model_a: str, model_b: str, answer_a: str, answer_b: str, owner: str | None = None,
               max_open_per_owner: int | None = None) -> str:
        """Store a battle waiting for its vote. Past `max_open_per_owner` battles waiting, the
        owner's oldest goes; so do every owner's battles left unvoted for OPEN_BATTLE_TTL_S."""
        battle_id = "battle-" + uuid.uuid4().hex
        now = time.time()
        with self._lock:
            self._db.execute("DELETE FROM battles WHERE winner IS NULL AND created < ?", (now - OPEN_BATTLE_TTL_S,))
            self._db.execute(
                "INSERT INTO battles (id, created, owner, prompt, model_a, model_b, answer_a, answer_b) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (battle_id, now, owner, json.dumps(prompt), model_a, model_b, answer_a, answer_b),
            )
            if max_open_per_owner is not None:
                self._db.execute(
                    "DELETE FROM battles WHERE id IN (SELECT id FROM battles WHERE winner IS NULL AND owner IS ? "
                    "ORDER BY created DESC LIMIT -1 OFFSET ?)", (owner, max_open_per_owner),
                )
        return battle_id

    def get(self, battle_id: str) -> dict | None:
        with self._lock:
            cursor = self._db.execute("SELECT * FROM battles WHERE id = ?", (battle_id,))
            row = cursor.fetchone()
            names = [c[0] for c in cursor.description]
        return None if row is None else dict(zip(names, row, strict=True))

    def vote(self, battle_id: str, winner: str, judge: str = "human") -> bool:
        """Record the vote; False if the battle already has one (a battle is voted once)."""
        if winner not in WINNERS:
            raise ValueError(f"winner must be one of {', '.join(WINNERS)}")
        with self._lock:
            cursor = self._db.execute(
                "UPDATE battles SET winner = ?, judge = ?, voted = ? WHERE id = ? AND winner IS NULL",
                (winner, judge, time.time(), battle_id),
            )
        return cursor.rowcount == 1

    def votes(self, judge: str | None = None) -> list[Vote]:
        """Every vote in the order it was cast (Elo depends on the order)."""
        query = "SELECT model_a, model_b, winner FROM battles WHERE winner IS NOT NULL"
        args: tuple = ()
        if judge is not None:
            query, args = query + " AND judge = ?", (judge,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY voted", args).fetchall()
        return [Vote(*r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


# -- automatic judges -------------------------------------------------------------------------


class ExactJudge:
    """On a suite with checkable answers: the correct answer wins; both right is a tie, both wrong both_bad."""

    name = "exact"

    def winner(self, sample, answer_a: str, answer_b: str) -> str:

        a, b = is_correct(answer_a, sample), is_correct(answer_b, sample)
        return "a" if a and not b else "b" if b and not a else "tie" if a else "both_bad"


class RewardJudge:
    """The reward model from `tuneserve finetune reward`: the higher-scored answer wins."""

    name = "reward"

    def __init__(self, reward_dir: str | Path, margin: float = 1e-3):

        self.model = Classifier.load(reward_dir, labels=["reward"])
        self.margin = margin

    def score(self, prompt: list[dict], answer: str) -> float:
        text = self.model.tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": answer}], tokenize=False)
        return self.model.logits([text])[0][0]

    def winner(self, sample, answer_a: str, answer_b: str) -> str:
        a, b = self.score(sample.prompt, answer_a), self.score(sample.prompt, answer_b)
        return "tie" if abs(a - b) < self.margin else "a" if a > b else "b"


class ArenaClient:
    """The arena API of a running server, for the CLI and the automatic judges. Errors (the
    server's, or an unreachable server) come out as ArenaError with the server's own message."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 600):
        import httpx

        self.base_url = base_url.rstrip("/")
        self.client = httpx.Client(base_url=self.base_url, headers=bearer_headers(api_key), timeout=timeout_s)

    def battle(self, messages: list[dict], models: list[str] | None = None, max_tokens: int = 64) -> dict:
        body = {"messages": messages, "temperature": 0, "max_tokens": max_tokens} | ({"models": models} if models else {})
        return self._call("POST", "/v1/arena/battles", json=body)

    def vote(self, battle_id: str, winner: str, judge: str) -> dict:
        return self._call("POST", f"/v1/arena/battles/{battle_id}/vote", json={"winner": winner, "judge": judge})

    def leaderboard(self, judge: str | None = None) -> list[dict]:
        return self._call("GET", "/v1/arena/leaderboard", params={"judge": judge} if judge else {})["data"]

    def close(self) -> None:
        self.client.close()

    def _call(self, method: str, path: str, **kwargs) -> dict:
        import httpx

        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ArenaError(f"{self.base_url}: {e}") from None
        if response.status_code != 200:
            try:
                message = response.json()["error"]["message"]
            except Exception:
                message = response.text[:300]
            raise ArenaError(f"{method} {path}: {response.status_code} {message}")
        return response.json()


def judged_battles(arena: ArenaClient, judge, samples: list, num_battles: int, models: list[str] | None = None,
                   seed: int = 0, on_battle=None) -> int:
    """Run `num_battles` battles through a server's arena API, each voted by `judge`; returns the
    number of votes cast. Prompts cycle through `samples`; pairs are the server's random picks,
    or drawn from `models`."""
    rng = random.Random(seed)
    for i in range(num_battles):
        sample = samples[i % len(samples)]
        battle = arena.battle(sample.prompt, rng.sample(models, 2) if models else None)
        arena.vote(battle["id"], judge.winner(sample, battle["answers"]["a"], battle["answers"]["b"]), judge.name)
        if on_battle is not None:
            on_battle(i + 1)
    return num_battles


class ArenaError(UserError, RuntimeError):
    """A battle the server refused; the message carries its error."""
