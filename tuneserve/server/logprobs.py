"""vLLM's per-token logprob dicts -> OpenAI's chat and completions logprob shapes (and vLLM's own)."""

from collections.abc import Sequence
from typing import Any

from tuneserve.server.protocol import ChatLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob


def _token_text(token_id: int, entry: Any, tokenizer: Any) -> str:
    if entry is not None and entry.decoded_token is not None:
        return entry.decoded_token
    return tokenizer.decode([token_id])


def _logprob(value: float) -> float:
    # JSON has no -inf; OpenAI clients expect a finite number (vLLM's own server uses -9999).
    return max(value, -9999.0)


def _top(position: dict, k: int, tokenizer: Any) -> list[tuple[str, float]]:
    ranked = sorted(position.items(), key=lambda kv: kv[1].logprob, reverse=True)[:k]
    return [(_token_text(tid, lp, tokenizer), _logprob(lp.logprob)) for tid, lp in ranked]


def chat_logprobs(
    token_ids: Sequence[int], logprobs: Sequence[dict] | None, k: int, tokenizer: Any
) -> ChatLogprobs | None:
    if logprobs is None:
        return None
    content = []
    for token_id, position in zip(token_ids, logprobs, strict=False):
        entry = position.get(token_id)  # vLLM always includes the sampled token; be safe if not
        token = _token_text(token_id, entry, tokenizer)
        content.append(
            TokenLogprob(
                token=token,
                logprob=_logprob(entry.logprob) if entry is not None else -9999.0,
                bytes=list(token.encode()),
                top_logprobs=[
                    TopLogprob(token=t, logprob=lp, bytes=list(t.encode()))
                    for t, lp in _top(position, k, tokenizer)
                ],
            )
        )
    return ChatLogprobs(content=content)


def completion_logprobs(
    token_ids: Sequence[int],
    logprobs: Sequence[dict | None] | None,
    k: int,
    tokenizer: Any,
    text_offset: int = 0,
) -> CompletionLogprobs | None:
    """OpenAI's legacy shape. A None position (the first prompt token under echo) has no logprob.

    Each `top_logprobs` entry holds the k most likely tokens and the chosen one, so `logprobs: 0`
    still names the chosen token's logprob there, as OpenAI does.
    """
    if logprobs is None:
        return None
    out = CompletionLogprobs()
    for token_id, position in zip(token_ids, logprobs, strict=False):
        entry = position.get(token_id) if position else None
        token = _token_text(token_id, entry, tokenizer)
        out.tokens.append(token)
        out.text_offset.append(text_offset)
        text_offset += len(token)
        if entry is None:
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            continue
        out.token_logprobs.append(_logprob(entry.logprob))
        out.top_logprobs.append({**dict(_top(position, k, tokenizer)), token: _logprob(entry.logprob)})
    return out


def vllm_prompt_logprobs(prompt_logprobs: Sequence[dict | None] | None) -> list[dict | None] | None:
    """vLLM's `prompt_logprobs` response field: per prompt token, {token_id: {logprob, rank, decoded_token}}."""
    if prompt_logprobs is None:
        return None
    return [
        None if position is None else {
            str(tid): {"logprob": _logprob(lp.logprob), "rank": lp.rank, "decoded_token": lp.decoded_token}
            for tid, lp in position.items()
        }
        for position in prompt_logprobs
    ]
