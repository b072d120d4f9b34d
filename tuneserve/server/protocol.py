"""OpenAI request and response shapes shared by every endpoint. Requests validate and convert themselves.

A name neither OpenAI nor vLLM defines is rejected ("Unrecognized request argument supplied"),
so a typo such as `max_token` fails loudly. OpenAI's parameters that mean nothing for a local
engine (`store`, `service_tier`, `reasoning_effort`, ...) are accepted and ignored, and named in
a debug log line. vLLM's extensions are honoured, or, for the few this server does not
implement (beam search, KV transfer, ...), accepted at their default value and refused otherwise.
Per-endpoint shapes live in chat_protocol, completion_protocol, responses_protocol and tokenize.
"""

import time
import uuid
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator
from pydantic_core import PydanticCustomError

from tuneserve.server.errors import BadRequestError

MAX_STOP_SEQUENCES = 4
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what the engine's wire format carries
INT32_MAX = 2**31 - 1
MAX_LOGPROBS = 20

# OpenAI parameters that change nothing on a local engine (storage, billing, routing, models
# with reasoning or audio). Accepted so SDK defaults and agent frameworks work; logged at debug.
OPENAI_IGNORED = (
    "user", "metadata", "store", "service_tier", "prompt_cache_key", "prompt_cache_retention",
    "prompt_cache_options", "safety_identifier", "reasoning_effort", "verbosity", "prediction",
    "web_search_options", "audio", "moderation",
)
# vLLM extensions with no effect here: scheduling hints and reasoning-model switches.
VLLM_IGNORED = (
    "priority", "request_id", "session_id", "include_reasoning", "thinking_token_budget",
    "stream_interval", "truncation_side", "mm_payload", "routed_experts_prompt_start",
)
# vLLM extensions this server does not implement: accepted at their default, refused otherwise.
VLLM_UNSUPPORTED: dict[str, Any] = {
    "use_beam_search": False, "length_penalty": 1.0, "watermarking": None, "logprob_token_ids": None,
    "documents": None, "chat_template": None, "media_io_kwargs": None, "mm_processor_kwargs": None,
    "return_mm_kwargs": None, "kv_transfer_params": None, "ec_transfer_params": None, "vllm_xargs": None,
    "repetition_detection": None, "return_token_offsets": False, "return_prompt_text": None,
    "prompt_embeds": None, "return_tokens_as_token_ids": None,
    # vllm-router re-serializes every chat and completion request with these SGLang fields at
    # their defaults (seen on the wire from vllm-router 0.1.17); accepted so replicas work behind it.
    "no_stop_trim": False, "separate_reasoning": True, "stream_reasoning": True, "return_hidden_states": False,
    "ignore_eos": False, "continue_final_message": False, "skip_special_tokens": True,
}


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    IGNORED: ClassVar[tuple[str, ...]] = OPENAI_IGNORED + VLLM_IGNORED

    @model_validator(mode="before")
    @classmethod
    def _set_aside(cls, data: Any):
        """Known-but-ignored names go to `ignored`; unsupported vLLM extras must be at their default."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        ignored = {k: data.pop(k) for k in cls.IGNORED if k in data}
        for name, default in VLLM_UNSUPPORTED.items():
            if name in data and name not in cls.model_fields:
                value = data.pop(name)
                if value is not None and value != default and value != {} and value != []:
                    raise PydanticCustomError(
                        "unsupported_parameter", "{name} is not supported by this server", {"name": name}
                    )
        if ignored:
            data["ignored"] = sorted(ignored)
        return data

    ignored: list[str] = Field(default_factory=list, exclude=True)


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's; usage arrives in the final chunk only


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` (exactly one constraint)."""

    model_config = ConfigDict(extra="forbid")

    json_: dict | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | None = None
    whitespace_pattern: str | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False

    def to_params(self) -> dict:
        return self.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True)


class JsonSchema(BaseModel):
    name: str = Field(max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object")
        return self


class SamplingFields(OpenAIRequest):
    """The sampling parameters every generating endpoint shares, with OpenAI's ranges."""

    model: str
    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None  # chat's; vLLM takes it on completions too
    # vLLM's extensions, sent by its users at the top level or through the client's extra_body.
    top_k: int | None = Field(None, ge=-1, le=INT32_MAX)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    min_tokens: int = Field(0, ge=0, le=INT32_MAX)
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    allowed_token_ids: list[int] | None = Field(None, min_length=1)
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    prompt_logprobs: int | None = Field(None, ge=-1, le=MAX_LOGPROBS)
    truncate_prompt_tokens: int | None = Field(None, ge=-1)
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict | str | None = None  # vLLM's older names for structured_outputs
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    cache_salt: str | None = None
    return_token_ids: bool | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v):
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, v):
        for token, bias in (v or {}).items():
            if not (token.isascii() and token.isdigit()):  # str.isdigit() alone takes "²", which int() refuses
                raise ValueError(f"keys must be token ids, got {token!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"bias for token {token} must be in [-100, 100]")
        return v

    @model_validator(mode="after")
    def _check_sampling(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if self.stream and self.prompt_logprobs is not None:
            raise ValueError("prompt_logprobs are not available when stream is true")
        return self

    def check_limits(self, config: Any) -> None:
        """The server's caps on what one request may ask for (ServeConfig: max_token_list_len, ...)."""
        cap = config.max_token_list_len
        for name in ("stop_token_ids", "bad_words", "logit_bias"):
            value = getattr(self, name)
            if value is not None and len(value) > cap:
                raise BadRequestError(f"{name} has {len(value)} entries; this server allows at most {cap}", param=name)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0

    @property
    def num_copies(self) -> int:
        """Engine requests to run: `n` for greedy decoding (see OpenAIServing.generate), else one."""
        return self.n if self.is_greedy else 1

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def num_logprobs(self) -> int | None:
        return None

    def num_prompt_logprobs(self) -> int | None:
        return self.prompt_logprobs

    def structured_output(self) -> dict | None:
        """vLLM StructuredOutputsParams fields: response_format, structured_outputs or the older guided_* names."""
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_object":
            return {"json_object": True}
        if fmt is not None and fmt.type == "json_schema":
            return {"json": fmt.json_schema.schema_}
        if self.structured_outputs is not None:
            return self.structured_outputs.to_params() or None
        guided = {"json": self.guided_json, "regex": self.guided_regex, "choice": self.guided_choice, "grammar": self.guided_grammar}
        return {k: v for k, v in guided.items() if v is not None} or None

    def to_sampling_params(self, max_tokens: int, **overrides: Any):
        """vLLM SamplingParams for this request; `max_tokens` is already fitted to the context.

        Outputs always come as deltas: streaming sends them on, non-streaming joins them (and so
        can measure time to first token too).
        """
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        structured = overrides.pop("structured", None) or self.structured_output()
        fields = dict(
            n=1 if self.is_greedy else self.n,
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            min_p=self.min_p or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            seed=self.seed,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids,
            bad_words=self.bad_words,
            allowed_token_ids=self.allowed_token_ids,
            min_tokens=self.min_tokens,
            ignore_eos=self.ignore_eos,
            logprobs=self.num_logprobs(),
            prompt_logprobs=self.num_prompt_logprobs(),
            logit_bias={int(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None,
            skip_special_tokens=self.skip_special_tokens,
            spaces_between_special_tokens=self.spaces_between_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output,
            structured_outputs=StructuredOutputsParams(**structured) if structured else None,
            output_kind=RequestOutputKind.DELTA,
        )
        return SamplingParams(**{**fields, **overrides})


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now_s() -> int:
    return int(time.time())


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)
    completion_tokens_details: CompletionTokensDetails = Field(default_factory=CompletionTokensDetails)

    @classmethod
    def of(cls, num_prompt_tokens: int, num_completion_tokens: int, num_cached_tokens: int = 0) -> "Usage":
        return cls(
            prompt_tokens=num_prompt_tokens,
            completion_tokens=num_completion_tokens,
            total_tokens=num_prompt_tokens + num_completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=num_cached_tokens),
        )


class DropNone(BaseModel):
    """Leaves out unset optional fields, as OpenAI does (`delta: {}`, no `prompt_logprobs: null`)."""

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tuneserve"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None


def check_count(values: list | None, cap: int, param: str, what: str) -> None:
    if values is not None and len(values) > cap:
        raise BadRequestError(f"{param} has {len(values)} {what}; this server allows at most {cap}", param=param)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
