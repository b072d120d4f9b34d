"""`tuneserve bench run` settings: a matrix of server settings under one workload and load."""

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tuneserve.config import describe_validation_error
from tuneserve.models.aliases import DEFAULT_MODEL
from tuneserve.server import ServeConfig


class AdapterMix(BaseModel):
    """Many adapters, asked for with Zipf popularity: `count` copies of `sources` (round robin, each
    made distinct), loaded by the server on first use from an adapter root bench prepares."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(100, ge=1, le=1000, description="Adapters on disk, named a000, a001, ...")
    zipf_s: float = Field(1.0, ge=0, description="Popularity of the k-th adapter: 1 / k^zipf_s.")
    sources: list[str] = Field(["examples/adapters/dates", "examples/adapters/units"], min_length=1,
                               description="PEFT adapter directories the copies are made from.")

    def names(self) -> list[str]:
        return [f"a{i:03d}" for i in range(self.count)]

    def weights(self) -> dict[str, float]:
        return {name: 1 / (k + 1) ** self.zipf_s for k, name in enumerate(self.names())}


class Workload(BaseModel):
    """What the requests ask for."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["synthetic", "multiturn", "sharegpt", "demo"] = Field(
        "synthetic",
        description="synthetic: chats of random words; multiturn: conversations of `turns` turns under a "
        "system prompt shared by each of `num_tenants` tenants (each turn resends the history, as chat "
        "clients do); sharegpt: a ShareGPT-format JSON file; demo: the finetune demo tasks' held-out prompts.",
    )
    num_prompts: int = Field(32, ge=1, description="Requests per run (per rate and repeat).")
    input_len: int = Field(128, ge=1, description="synthetic: prompt length in words (about tokens).")
    output_len: int = Field(64, ge=1, description="Output tokens per request (synthetic: exact, via ignore_eos; "
                            "sharegpt: the cap; demo: the cap).")
    range_ratio: float = Field(0.0, ge=0, lt=1, description="synthetic: lengths vary uniformly by +- this fraction.")
    ignore_eos: bool | None = Field(
        None, description="Generate exactly the output length (default: yes for synthetic, no otherwise)."
    )
    unique_prefix: bool = Field(
        True, description="Start every prompt with a tag unique to the run, so the prefix cache cannot "
        "serve a run from an earlier one. Off only to send a file's prompts verbatim (e.g. to compare "
        "with `vllm bench serve` on a server without prefix caching).",
    )
    turns: int = Field(4, ge=1, le=64, description="multiturn: turns per conversation (num_prompts / turns conversations).")
    system_prompt_len: int = Field(256, ge=0, description="multiturn: words of each tenant's system prompt.")
    num_tenants: int = Field(4, ge=1, description="multiturn: distinct system prompts, one per tenant.")
    session_header: Literal["conversation", "model"] | None = Field(
        None, description="Send X-Session-ID with each request: the conversation's id, or the model (adapter) "
        "name, for a router's session affinity (vllm-router's consistent_hash and cache_aware read it).",
    )
    path: str | None = Field(None, description="sharegpt: the JSON file.")
    task: str = Field("all", description="demo: one task or `all`.")
    models: dict[str, float] | None = Field(
        None, description="Model or adapter names with popularity weights (e.g. {dates: 3, units: 1}); "
        "default: the setting's model only.",
    )
    adapter_mix: AdapterMix | None = Field(
        None, description="Many adapters loaded on first use, Zipf-popular (instead of models).",
    )

    @model_validator(mode="after")
    def _check(self):
        if self.kind == "sharegpt" and not self.path:
            raise ValueError("workload.path: a sharegpt workload needs the JSON file")
        if self.models is not None and (not self.models or any(w <= 0 for w in self.models.values())):
            raise ValueError("workload.models: give at least one name, each with a weight > 0")
        if self.models is not None and self.adapter_mix is not None:
            raise ValueError("workload: give models or adapter_mix, not both")
        return self

    @property
    def model_weights(self) -> dict[str, float] | None:
        return self.adapter_mix.weights() if self.adapter_mix else self.models


class Load(BaseModel):
    """How the requests arrive."""

    model_config = ConfigDict(extra="forbid")

    request_rates: list[float] = Field(
        [math.inf], description="Requests per second to sweep (inf: all at once, up to max_concurrency)."
    )
    burstiness: float = Field(1.0, gt=0, description="Gamma shape of arrival gaps: 1 is Poisson, < 1 burstier.")
    max_concurrency: int | None = Field(None, ge=1, description="Most requests in flight; others wait client-side.")
    warmup_requests: int = Field(2, ge=0, description="Requests sent and discarded before each setting is measured.")

    @field_validator("request_rates")
    @classmethod
    def _rates(cls, rates: list[float]) -> list[float]:
        if not rates or any(r <= 0 for r in rates):
            raise ValueError("request_rates: give one or more rates > 0 (inf for all at once)")
        return rates


class Setting(BaseModel):
    """One server configuration to measure."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Row label in tables and plots.")
    serve: dict[str, Any] = Field(
        default_factory=dict, description="`tuneserve serve` settings (the keys of its --config YAML), "
        "e.g. {speculative: 'ngram:4', cpu_threads: 1, enforce_eager: false}.",
    )
    engine: Literal["tuneserve", "vllm", "llamacpp"] = Field(
        "tuneserve", description="vllm: run `vllm serve` with the same model, threads, KV cache and eager "
        "mode (the peer, for gateway overhead); llamacpp: llama.cpp's own server (xllamacpp) on the GGUF "
        "that serve.model names (a `tuneserve optimize export` directory), same threads, a slot per stream.",
    )
    workload: dict[str, Any] = Field(default_factory=dict, description="Overrides of the matrix workload.")
    url: str | None = Field(None, description="Measure a server already running here instead of starting one.")
    api_key: str | None = Field(
        None, description="Bearer key for the server (default: $TUNESERVE_API_KEY); never written to results."
    )


class BenchMatrix(BaseModel):
    """A bench matrix: settings measured one after another under the same workload and load."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("bench", description="Name of the run (report title).")
    model: str = Field(DEFAULT_MODEL, description="Model every setting serves unless its `serve.model` says otherwise.")
    serve: dict[str, Any] = Field(
        default_factory=dict, description="`tuneserve serve` settings every setting starts from (its own `serve` "
        "overrides them), e.g. {enable_lora: false} to compare optimizations without LoRA.",
    )
    workload: Workload = Field(default_factory=Workload)
    load: Load = Field(default_factory=Load)
    repeat: int = Field(3, ge=1, description="Runs per setting and rate; the report gives median and min-max.")
    rounds: int = Field(
        1, ge=1, le=20, description="Passes over all settings, each starting every server afresh; a setting's runs "
        "are pooled over the rounds. Interleaving cancels drift in the machine's speed, which otherwise favours "
        "whichever setting ran when the machine was faster.",
    )
    seed: int = Field(0, description="Seeds prompts, lengths, arrivals and sampling.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature of every request.")
    slo: dict[str, float] = Field(default_factory=dict, description="Goodput SLOs in ms: {ttft: 500, tpot: 50}.")
    settings: list[Setting] = Field(min_length=1, description="The rows of the comparison.")

    @model_validator(mode="after")
    def _check(self):
        names = [s.name for s in self.settings]
        if len(set(names)) != len(names):
            raise ValueError(f"settings: names must be unique, got {names}")
        bad = set(self.slo) - {"ttft", "tpot", "e2el"}
        if bad:
            raise ValueError(f"slo: unknown {sorted(bad)}; use ttft, tpot, e2el (milliseconds)")
        for s in self.settings:  # fail here, naming the setting, rather than an hour into the run
            self.workload_for(s)
            self.serve_config_for(s)
        return self

    def workload_for(self, setting: Setting) -> Workload:
        from pydantic import ValidationError


        try:
            return Workload(**(self.workload.model_dump() | setting.workload))
        except ValidationError as e:
            raise ValueError(f"settings[{setting.name!r}].workload.{describe_validation_error(e)}") from None

    def serve_config_for(self, setting: Setting) -> dict[str, Any]:
        """The setting's `tuneserve serve` YAML, checked against ServeConfig (bad keys named)."""
        from pydantic import ValidationError


        values = {"model": self.model, "seed": self.seed} | self.serve | setting.serve
        try:
            ServeConfig(**values)
        except ValidationError as e:
            raise ValueError(f"settings[{setting.name!r}].serve.{describe_validation_error(e)}") from None
        return values
