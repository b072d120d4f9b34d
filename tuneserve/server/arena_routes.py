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

from tuneserve.server.admission import authorize
from tuneserve.server.chat_protocol import ChatCompletionRequest
from tuneserve.server.errors import BadRequestError, ClientError, NotFoundError
from tuneserve.server.metrics import RequestStats

router = APIRouter()


class ConflictError(ClientError):
    status = 409
    code = "already_voted"


class BattleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[dict] = Field(min_length=1, description="The conversation both models answer (chat format).")
    models: list[str] | None = Field(None, min_length=2, max_length=2, description="The pair to compare (default: two at random).")
    max_tokens: int = Field(256, ge=1, le=4096)
    temperature: float = Field(0.7, ge=0, le=2)


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
    store = arena_store(raw)
    tenant = authorize(raw, "inference")
    serving = raw.app.state.serving
    allowed = [m.id for m in serving.list_models(lambda name: tenant is None or tenant.may_use(name)).data]
    allowed = [serving.model.names[0]] + [m for m in allowed if m not in serving.model.names]
    if body.models is not None:
        for name in body.models:
            if tenant is not None:
                tenant.require_model(name)
            serving.require_known(name)
        if body.models[0] == body.models[1]:
            raise BadRequestError("models: give two different models", param="models")
        pair = list(body.models)
        random.shuffle(pair)
    elif len(allowed) < 2:
        raise BadRequestError("the arena needs at least two models: load an adapter (or allow this key another model)")
    else:
        pair = random.sample(allowed, 2)
    if tenant is not None:
        tenant.admit()  # a battle counts as one request against requests_per_minute
    answers = await asyncio.gather(*(_answer(raw, tenant, name, body) for name in pair))
    battle_id = store.create(body.messages, pair[0], pair[1], answers[0], answers[1], tenant.name if tenant else None)
    return JSONResponse({"id": battle_id, "object": "arena.battle", "answers": {"a": answers[0], "b": answers[1]}})


async def _answer(raw: Request, tenant, model: str, body: BattleRequest) -> str:
    """One model's answer, through the same admission, token limits, guards and serving as
    /v1/chat/completions."""
    from tuneserve.server.inference import finish_request, reserve_tokens

    state = raw.app.state
    request = ChatCompletionRequest(model=model, messages=body.messages, max_tokens=body.max_tokens, temperature=body.temperature)
    stats = RequestStats(model=state.serving.model.names[0], owner=tenant.name if tenant else None)
    if tenant is not None:
        stats.reserve_tokens = lambda n: reserve_tokens(stats, tenant, n)
    status = 500
    state.admission.admit()
    try:
        if state.guards is not None:
            await state.guards.check_input(request, tenant)
        async with state.serving.target(model, stats) as lora_request:
            response = await state.chat.create(request, lora_request, stats)
        if state.guards is not None and (leaks := state.guards.output_checker(request, tenant)) is not None:
            leaks.check_response(response)
        status = 200
        return response.choices[0].message.content or ""
    except Exception as exc:
        from tuneserve.server.errors import status_of

        status = status_of(exc)
        raise
    finally:
        finish_request(stats, tenant, status)
        state.admission.release()


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
    from tuneserve.evals.arena import leaderboard

    store = arena_store(raw)
    authorize(raw, "inference")
    judge = raw.query_params.get("judge")
    votes = store.votes(judge)
    rows = await asyncio.to_thread(leaderboard, votes)
    return JSONResponse({"object": "list", "data": rows, "num_votes": len(votes), "judge": judge})
