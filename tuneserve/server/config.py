"""`tuneserve serve` settings: one pydantic model, loadable from YAML, overridable by flags."""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tuneserve.config import tuneserve_home
from tuneserve.engine.launch import LORA_RANKS
from tuneserve.engine.memory import DEFAULT_MAX_LORAS, LORA_CACHE_SHARE, MAX_DEFAULT_CPU_LORAS
from tuneserve.models.aliases import DEFAULT_MODEL
from tuneserve.server.adapter_sources import check_url_prefix

LoraRank = Literal[LORA_RANKS]


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(DEFAULT_MODEL, description="Model reference: alias, imported name, local HF dir, .gguf file or hub id.")
    engine: Literal["vllm", "llamacpp"] = Field(
        "vllm", description="vllm: batching, adapters, every feature. llamacpp: llama.cpp's server (xllamacpp) on a GGUF of "
        "the model, behind the same API, keys and limits: ~3x faster for one stream on a CPU without native bf16, no "
        "adapters; what it cannot serve is refused by name (README, one user at a time).",
    )
    gguf_type: Literal["bf16", "f16", "f32", "q8_0"] = Field(
        "bf16", description="--engine llamacpp: weights of the GGUF written from the model (once, cached under "
        "$TUNESERVE_HOME/gguf); q8_0 is faster and smaller, its answers may differ on near-ties. A `tuneserve optimize "
        "export` directory as --model is served as it is.",
    )
    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one).")
    served_model_name: list[str] | None = Field(
        None, description="Names clients use in `model`; default: the model reference as given."
    )
    max_model_len: int | None = Field(
        None, ge=16, description="Context length (prompt + output); default: the model's own."
    )
    kv_cache_gib: float | None = Field(
        None, gt=0,
        description="Memory for the paged KV cache in GiB. Default on CPU: half the memory left after the "
        "weights and runtime, at most 4 GiB (logged at start with the tokens it holds); on GPU: vLLM's "
        "--gpu-memory-utilization.",
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="GPU only: fraction of GPU memory vLLM may use (vLLM's default 0.92)."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights and activations dtype. auto: the model's own, except float32 on a CPU "
        "without native bf16 (AVX2-only x86), where emulated bf16 prefill was 5x slower."
    )
    max_num_seqs: int | None = Field(None, ge=1, description="Most sequences batched per step.")
    enforce_eager: bool | None = Field(
        None, json_schema_extra={"flag": "--enforce-eager/--compile"},
        description="Skip torch.compile. Default: on for CPU (compiled is as correct but only ~3% faster "
        "there and starts ~45-55 s slower; see README, CPU defaults), off on GPU.",
    )
    prefix_caching: bool = Field(True, description="Reuse KV cache across shared prompt prefixes.")
    cpu_threads: int | None = Field(
        None, ge=1, description="CPU only: OpenMP threads of the engine, split among its ranks; default: every core we may use."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="Shard every layer over this many devices (vLLM's tensor parallelism).")
    pipeline_parallel_size: int = Field(1, ge=1, description="Split the layers into this many stages, one per device (pipeline parallelism).")
    data_parallel_size: int = Field(1, ge=1, description="Run this many engine replicas behind one API server (data parallelism).")
    distributed_executor_backend: Literal["mp", "ray", "uni"] | None = Field(
        None, description="How vLLM starts its ranks: mp (processes on this node), ray (several nodes), uni (in the engine "
        "core); default: uni on CPU with one rank (one process fewer, faster start and one stream), else vLLM's.",
    )
    seed: int = Field(0, description="Engine seed (per-request `seed` overrides for sampling).")
    enable_lora: bool = Field(
        True, json_schema_extra={"flag": "--lora/--no-lora"},
        description="Serve LoRA adapters (on by default: any adapter a request names is loaded on first use); --no-lora "
        "serves the base model only.",
    )
    adapters: dict[str, str] = Field(
        default_factory=dict, json_schema_extra={"flag": "--adapter"}, description="Adapters to load at start: NAME=PATH (repeatable)."
    )
    adapter_roots: list[str] = Field(
        default_factory=list, json_schema_extra={"flag": "--adapter-root"},
        description="Directories of adapters (one directory per adapter name) that requests load on first use and the "
        "admin API loads from; default: $TUNESERVE_HOME/adapters.",
    )
    adapter_url_prefixes: list[str] = Field(
        default_factory=list, json_schema_extra={"flag": "--adapter-url-prefix"},
        description="URL prefixes (http(s)://HOST/PATH/) of adapter archives requests may name as `model` (repeatable); "
        "none by default, so a request cannot make the server fetch an arbitrary URL.",
    )
    adapter_disk_gib: float = Field(
        4.0, gt=0, description="Disk for the checked snapshots of adapters loaded on first use (and their downloads): past "
        "it the least recently used idle, unpinned one is unloaded.",
    )
    adapters_file: str | None = Field(
        None, description="YAML file declaring adapters (name -> path, optional version) that the server loads at "
        "start and reconciles whenever it changes: in Kubernetes a ConfigMap, so every replica serves the same set.",
    )
    adapters_file_poll_s: float = Field(2.0, gt=0, description="How often the --adapters-file is checked for changes.")
    max_loras: int | None = Field(
        None, ge=1, description=f"Adapters active in one engine step; default: {DEFAULT_MAX_LORAS}, fewer when their weights "
        f"would take more than {LORA_CACHE_SHARE:.0%} of the available memory (logged at start).",
    )
    max_lora_rank: LoraRank = Field(16, description="Largest adapter rank accepted (vLLM allows 1, 8, 16, 32, 64, 128, 256, 320, 512).")
    max_cpu_loras: int | None = Field(
        None, ge=1, description="Adapters kept loaded in vLLM's adapter cache; default: as many as fit in "
        f"{LORA_CACHE_SHARE:.0%} of the available memory, at least --max-loras, at most {MAX_DEFAULT_CPU_LORAS} (logged at start).",
    )
    lora_kernels: Literal["tuneserve", "vllm"] = Field(
        "tuneserve", description="CPU only: multi-LoRA ops - tuneserve's grouped GEMMs (vLLM plugin) or vLLM's own "
        "per-token ops (README, multi-LoRA speed).",
    )
    max_request_bytes: int = Field(
        4 << 20, ge=1024, description="Largest accepted request body; larger ones get 413."
    )
    api_key: str | None = Field(
        None, min_length=8, json_schema_extra={"envvar": "TUNESERVE_API_KEY"}, description="One key with every scope (the simple case)."
    )
    api_keys: str | None = Field(None, description="YAML file of tenants: keys, scopes, allowed models, limits.")
    guard_model: str | None = Field(
        None, description="Input guard: a `tuneserve finetune classify` adapter scoring prompts for injection attacks "
        "(per-tenant settings in --api-keys; without keys it guards every request).",
    )
    playground: bool = Field(False, description="Serve the web playground (chat, arena battles, leaderboard) at /playground.")
    arena_db: str | None = Field(None, description="SQLite file of arena votes (default $TUNESERVE_HOME/arena.sqlite).")
    max_queued_requests: int | None = Field(
        None, ge=1, description="Engine requests (prompts x n of every request) in flight beyond this get 503 + Retry-After."
    )
    max_parallel_requests_per_key: int | None = Field(
        None, ge=1, description="Engine requests (prompts x n) each keys-file tenant may run at once, 429 beyond; default: half "
        "of the engine's max_num_seqs, so that no key fills every batch slot. A tenant's max_parallel_requests overrides it.",
    )
    max_choices_per_request: int = Field(
        128, ge=1, description="Most engine requests one request may run: prompts x n (400 beyond)."
    )
    max_messages: int = Field(
        1024, ge=1, description="Most chat messages, Responses input items or arena messages in one request (400 beyond)."
    )
    max_tools: int = Field(128, ge=1, description="Most tools (functions) in one request, OpenAI's own limit (400 beyond).")
    max_token_list_len: int = Field(
        256, ge=1, description="Most entries in each of stop_token_ids, bad_words and logit_bias (400 beyond)."
    )
    max_guard_chars: int = Field(
        16384, ge=1, description="Most characters a guard reads in one guarded request: the client text the input guard "
        "scores, the system prompt the output guard protects (400 beyond).",
    )
    max_stored_responses_mib: float = Field(
        256, gt=0, description="Memory for stored Responses (previous_response_id, GET /v1/responses/ID), in MiB."
    )
    max_stored_responses_mib_per_key: float = Field(
        32, gt=0, description="Each key's share of the stored Responses: past it a key loses its own least recently "
        "used responses, never another key's.",
    )
    max_open_battles_per_key: int = Field(
        100, ge=1, description="Arena battles a key may have waiting for a vote; a new one past it drops its oldest."
    )
    send_timeout_s: float = Field(
        30.0, gt=0, description="A stream whose client reads nothing for this long is ended, freeing what it holds."
    )
    max_tokens_cap: int | None = Field(None, ge=1, description="Largest max_tokens a request may ask for.")
    request_timeout_s: float | None = Field(None, gt=0, description="Abort requests running longer than this.")
    drain_timeout_s: float = Field(30.0, ge=0, description="On SIGTERM, how long in-flight requests may take to finish.")
    replicas: int = Field(
        1, ge=1, le=64, description="Run this many servers on this machine, each with its share of the cores and memory, "
        "behind vLLM's router (vllm-router) on --host/--port; a replica that dies is restarted.",
    )
    router_policy: Literal["cache_aware", "kv_aware", "round_robin", "power_of_two", "consistent_hash", "random"] = Field(
        "cache_aware", description="With --replicas: how the router picks a replica. cache_aware: where the prompt's "
        "prefix was served before (warm prefix cache), unless the load is uneven; kv_aware: the least prefill and "
        "decode work left, from the prefixes each engine reports it holds (its KV-cache events).",
    )
    router_retries: int = Field(3, ge=0, le=10, description="With --replicas: tries on another replica after a refusal or a dropped connection.")
    router_args: list[str] = Field(
        default_factory=list, json_schema_extra={"flag": "--router-arg"},
        description="With --replicas: more vllm-router flags, passed as given (repeatable, e.g. --router-arg=--cache-threshold=0.5).",
    )
    kv_events_endpoint: str | None = Field(
        None, description="Publish the engine's KV-cache events (blocks stored and removed, with their tokens) on this "
        "ZMQ endpoint for a router's kv_aware policy: the engine binds tcp://127.0.0.1:PORT, ipc://PATH and "
        "tcp://*:PORT (every interface: the tokens are the prompts) and connects to other addresses; --replicas "
        "with --router-policy kv_aware gives each replica one on loopback.",
    )
    speculative: str | None = Field(
        None, description="Speculative decoding: ngram[:K] or draft:MODEL_REF[:K] (K draft tokens, default 4)."
    )
    metrics_auth: bool = Field(
        False, description="Require an API key (any scope) for /metrics and /version too."
    )
    public_docs: bool = Field(
        False, description="With keys: serve /docs and /openapi.json without one (by default they need a valid key)."
    )
    chat_template: str | None = Field(
        None, description="Jinja chat template file replacing the model's own. Default: the model's; for "
        "requests with tools, a ChatML+Hermes template when the model's cannot render tools.",
    )
    tool_call_parser: str = Field(
        "hermes", description="vLLM tool parser reading tool calls when tool_choice is auto (vLLM's --tool-call-parser)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Server log level.")

    @field_validator("served_model_name")
    @classmethod
    def _non_empty_names(cls, v):
        if v is not None and (not v or any(not n.strip() for n in v)):
            raise ValueError("served_model_name entries must be non-empty")
        return v

    @field_validator("adapters", mode="before")
    @classmethod
    def _parse_adapters(cls, v):
        if not isinstance(v, list):
            return v
        adapters = {}
        for item in v:
            name, sep, path = str(item).partition("=")
            if not sep or not name or not path:
                raise ValueError(f"{item!r}: expected NAME=PATH")
            if name in adapters:
                raise ValueError(f"adapter name {name!r} is given twice")
            adapters[name] = path
        return adapters

    @field_validator("adapter_url_prefixes")
    @classmethod
    def _check_url_prefixes(cls, v):
        return [check_url_prefix(prefix) for prefix in v]

    @field_validator("kv_events_endpoint")
    @classmethod
    def _check_kv_events_endpoint(cls, v):
        if v is not None and not v.startswith(("tcp://", "ipc://")):
            raise ValueError(f"{v!r} is not a ZMQ endpoint (tcp://HOST:PORT or ipc://PATH)")
        return v

    @field_validator("speculative")
    @classmethod
    def _check_speculative(cls, v):
        if v is not None:
            parse_speculative(v)
        return v

    @field_validator("chat_template")
    @classmethod
    def _template_readable(cls, v):
        if v is not None and not Path(v).expanduser().is_file():
            raise ValueError(f"{v}: no such file")
        return v

    @model_validator(mode="after")
    def _adapters_need_lora(self):
        if self.adapters and not self.enable_lora:
            raise ValueError(f"adapters: {sorted(self.adapters)} need LoRA; drop --no-lora (enable_lora: false)")
        return self

    @model_validator(mode="after")
    def _engine_serves_them(self):
        if self.engine == "llamacpp":
            refused = [name for name in self.model_fields_set if name in VLLM_ONLY and getattr(self, name) != VLLM_ONLY[name]]
            refused += ["router_policy"] if self.router_policy == "kv_aware" else []  # it reads vLLM's KV-cache events
            if refused:
                from tuneserve.options import flag_name

                flags = ", ".join(sorted(flag_name(n, type(self).model_fields[n]).split("/")[0] for n in refused))
                raise ValueError(f"{flags}: served by --engine vllm only, not by --engine llamacpp")
        elif "gguf_type" in self.model_fields_set:
            raise ValueError("--gguf-type applies to --engine llamacpp")
        return self

    @property
    def num_ranks(self) -> int:
        """Engine ranks (devices, or groups of CPU cores) this config starts."""
        return self.tensor_parallel_size * self.pipeline_parallel_size * self.data_parallel_size

    @property
    def model_names(self) -> list[str]:
        return self.served_model_name or [self.model]

    @property
    def is_lora_enabled(self) -> bool:
        return self.enable_lora and self.engine == "vllm"

    @property
    def adapter_root_dirs(self) -> list[Path]:
        """--adapter-root, or the default $TUNESERVE_HOME/adapters (created if missing)."""
        if self.adapter_roots:
            return [Path(r).expanduser().resolve() for r in self.adapter_roots]
        default = tuneserve_home() / "adapters"
        default.mkdir(parents=True, exist_ok=True)
        return [default.resolve()]


# Settings only vLLM serves, with the value that asks for nothing (given explicitly with
# --engine llamacpp, any other value is refused by name).
VLLM_ONLY = {
    "dtype": "auto", "kv_cache_gib": None, "gpu_memory_utilization": None, "enforce_eager": True, "prefix_caching": True,
    "tensor_parallel_size": 1, "pipeline_parallel_size": 1, "data_parallel_size": 1, "distributed_executor_backend": None,
    "enable_lora": False, "adapters": {}, "adapter_roots": [], "adapter_url_prefixes": [], "adapters_file": None,
    "max_loras": None, "max_cpu_loras": None, "lora_kernels": "tuneserve", "speculative": None, "kv_events_endpoint": None,
}

DEFAULT_SPECULATIVE_TOKENS = 4


def parse_speculative(spec: str) -> tuple[str, str | None, int]:
    """"ngram", "ngram:5", "draft:REF", "draft:REF:3" -> (method, draft model ref, num tokens)."""
    method, _, rest = spec.partition(":")
    if method == "ngram":
        if rest and not rest.isdigit():
            raise ValueError(f"{spec!r}: expected ngram or ngram:K with K a number")
        return "ngram", None, int(rest or DEFAULT_SPECULATIVE_TOKENS)
    if method == "draft" and rest:
        ref, sep, k = rest.rpartition(":")
        if not (sep and k.isdigit()):
            ref, k = rest, ""
        if ref:
            return "draft", ref, int(k or DEFAULT_SPECULATIVE_TOKENS)
    raise ValueError(f"{spec!r}: expected ngram[:K] or draft:MODEL_REF[:K]")
