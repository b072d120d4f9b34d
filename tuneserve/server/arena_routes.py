"""The playground page and the arena API (`--playground`; off by default, behind the same keys).

POST /v1/arena/battles             two anonymous answers (models picked at random among those the key may use)
POST /v1/arena/battles/{id}/vote   {"winner": "a" | "b" | "tie" | "both_bad"}: stores the vote, reveals the names
GET  /v1/arena/leaderboard         Bradley-Terry ratings with bootstrap intervals, and Elo (tuneserve/evals/arena.py)
GET  /playground                   the page (chat, battle, leaderboard); it sends the key the user enters
"""

import asyncio
import random
from importlib import resources
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tuneserve.evals.arena import leaderboard
from tuneserve.server.admission import authorize
from tuneserve.server.chat_protocol import ChatCompletionRequest, ChatMessage
from tuneserve.server.errors import BadRequestError, ClientError, NotFoundError
from tuneserve.server.lifecycle import run_request
from tuneserve.server.protocol import check_count
from tuneserve.server.serving import gather_or_cancel

router = APIRouter()


class ConflictError(ClientError):
    status = 409
    code = "already_voted"


class BattleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1, description="The conversation both models answer (chat format).")
    models: list[str] | None = Field(None, min_length=2, max_length=2, description="The pair to compare (default: two at random).")
    max_tokens: int = Field(256, ge=1, le=4096)
    temperature: float = Field(0.7, ge=0, le=2)

    def check_limits(self, config) -> None:
        check_count(self.messages, config.max_messages, "messages", "messages")


class BattleResponse(BaseModel):
    id: str
    object: str = "arena.battle"
    answers: dict[str, str]


class VoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    winner: Literal["a", "b", "tie", "both_bad"]
    judge: str = Field("human", pattern=r"^[a-z0-9_:.-]{1,40}$", description="Who voted: human, or an automatic judge (exact, reward).")


def arena_store(raw: Request):
    store = raw.app.state.arena
    if store is None:
        raise NotFoundError("the playground and arena are off on this server: start it with --playground")
    return store


@router.get("/playground", response_class=HTMLResponse)
async def playground(raw: Request):
    arena_store(raw)
    return HTMLResponse(resources.files("tuneserve.server").joinpath("static/playground.html").read_text())


@router.post("/v1/arena/battles")
async def create_battle(body: BattleRequest, raw: Request):
    arena_store(raw)
    return await run_request(raw, body, raw.app.state.battles)


class Battles:
    """Two anonymous answers to one conversation, run as one request of the asking key."""

    def __init__(self, chat, store):
        self.chat, self.store = chat, store

    async def create(self, body: BattleRequest, ctx) -> BattleResponse:
        pair = pick_pair(body, ctx)
        requests = [
            ChatCompletionRequest(model=name, messages=body.messages, max_tokens=body.max_tokens, temperature=body.temperature)
            for name in pair
        ]
        responses = await gather_or_cancel(*(self.chat.create(r, ctx) for r in requests))
        answers = [r.choices[0].message.content or "" for r in responses]
        messages = [{"role": m.role, "content": m.text} for m in body.messages]
        owner = ctx.tenant.name if ctx.tenant else None
        battle_id = self.store.create(messages, pair[0], pair[1], answers[0], answers[1], owner, ctx.config.max_open_battles_per_key)
        return BattleResponse(id=battle_id, answers={"a": answers[0], "b": answers[1]})


def pick_pair(body: BattleRequest, ctx) -> list[str]:
    """The two models: the ones asked for (the key must be allowed both), or two at random among
    the base and the adapters the key may use (per-request merges left out)."""
    if body.models is not None:
        for name in body.models:
            ctx.require_model(name)
        if body.models[0] == body.models[1]:
            raise BadRequestError("models: give two different models", param="models")
        pair = list(body.models)
        random.shuffle(pair)
        return pair
    tenant, serving = ctx.tenant, ctx.serving
    allowed = [m.id for m in serving.list_models(lambda name: tenant is None or tenant.may_use(name)).data]
    bases = [n for n in serving.model.names if n in allowed][:1]  # the base once, under a name the key may use
    # merges loaded for one request (merge:A*w+B*w) are mixtures of other candidates, not models of their own
    candidates = bases + [m for m in allowed if m not in serving.model.names and not m.startswith("merge:")]
    if len(candidates) < 2:
        raise BadRequestError("the arena needs at least two models: load an adapter (or allow this key another model)")
    return random.sample(candidates, 2)


@router.post("/v1/arena/battles/{battle_id}/vote")
async def vote(battle_id: str, body: VoteRequest, raw: Request):
    store = arena_store(raw)
    tenant = authorize(raw, "inference")
    battle = store.get(battle_id)
    if battle is None or (tenant is not None and battle["owner"] != tenant.name):
        raise NotFoundError(f"no battle {battle_id!r}", param="battle_id")
    if not store.vote(battle_id, body.winner, judge=body.judge):
        raise ConflictError(f"battle {battle_id!r} already has a vote")
    return JSONResponse({"id": battle_id, "winner": body.winner, "model_a": battle["model_a"], "model_b": battle["model_b"]})


@router.get("/v1/arena/leaderboard")
async def arena_leaderboard(raw: Request):
    arena_store(raw)
    return await run_request(raw, LeaderboardRequest(judge=raw.query_params.get("judge")), raw.app.state.leaderboard)


class LeaderboardRequest(BaseModel):
    judge: str | None = None


class Leaderboard:
    """Ratings of the models the key may use. Bootstrapping takes a while with many votes: it runs
    in a thread, and once per set of votes (the result is kept until a vote changes it)."""

    generates = False

    def __init__(self, store):
        self.store = store
        self._cache: dict[tuple, list[dict]] = {}

    async def create(self, body: LeaderboardRequest, ctx) -> "LeaderboardResponse":

        votes = self.store.votes(body.judge)
        key = (body.judge, len(votes))
        if key not in self._cache:
            self._cache.clear()
            self._cache[key] = await asyncio.to_thread(leaderboard, votes)
        rows = [r for r in self._cache[key] if ctx.tenant is None or ctx.tenant.may_use(r["model"])]
        return LeaderboardResponse(data=rows, num_votes=len(votes), judge=body.judge)


class LeaderboardResponse(BaseModel):
    object: str = "list"
    data: list[dict]
    num_votes: int
    judge: str | None
