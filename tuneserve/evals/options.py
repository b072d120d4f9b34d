"""The options of `tuneserve eval ...`, declared once (tuneserve/options.py builds the flags)."""

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class SuiteOptions(BaseModel):
    """A named suite's held-out scores (exact match, perplexity) for a model or model + adapter, through vLLM.

    Example: tuneserve eval suite general --adapter examples/adapters/dates
    """

    model_config = ConfigDict(extra="forbid")

    suite: str = Field("general", description="demo (the demo tasks) or general (facts and instructions).")
    model: str | None = Field(None, description="Base model reference (default smollm2-135m-instruct).")
    adapter: str | None = Field(None, description="PEFT adapter directory to apply.")
    num_samples: int = Field(50, ge=1, description="demo: samples per task.")


class ForgettingOptions(BaseModel):
    """What a finetuned model lost on the general suite against its base.

    Reports exact match on checkable answers (base vs candidate), the perplexity of the base's own
    greedy answers under each, agreement with the base, per category, and examples of answers lost.
    The report is also stored in the adapter's (or model's) tuneserve.json under metrics.forgetting.

    Example: tuneserve eval forgetting --adapter examples/adapters/dates
    """

    model_config = ConfigDict(extra="forbid")

    adapter: str | None = Field(None, description="Adapter directory, scored on its base.")
    candidate: str | None = Field(None, description="Or a model (merged, quantized, distilled) to compare with the base.")
    model: str | None = Field(None, description="The base model reference (default smollm2-135m-instruct).")
    out: Path | None = Field(None, description="Also write the report as JSON here.")


class ArenaOptions(BaseModel):
    """Battles without people (an automatic judge votes), then the leaderboard: Bradley-Terry with
    95% bootstrap intervals and Elo, as Chatbot Arena computes them.

    Examples:
      tuneserve eval arena --server http://127.0.0.1:8000 --judge exact --suite demo --num-battles 60
      tuneserve eval arena --db ~/.cache/tuneserve/arena.sqlite
    """

    model_config = ConfigDict(extra="forbid")

    server: str | None = Field(None, description="A server started with --playground: run judged battles there.")
    api_key: str | None = Field(None, json_schema_extra={"envvar": "TUNESERVE_API_KEY"}, description="Key for server.")
    judge: str = Field("exact", description="exact (checkable answers of suite) or reward:DIR (a `finetune reward` model).")
    suite: str = Field("demo", description="Prompts for the battles: demo or general.")
    models: str | None = Field(None, description="Comma-separated models to pit (default: the server picks among all).")
    num_battles: int = Field(40, ge=0, description="Judged battles to run (0: only print the leaderboard).")
    db: Path | None = Field(None, description="Without server: print the leaderboard of this arena SQLite file.")
    only_judge: str | None = Field(None, description="Rate only the votes of this judge (human, exact, reward).")

    @field_validator("judge")
    @classmethod
    def _known_judge(cls, value: str) -> str:
        if value != "exact" and not (value.startswith("reward:") and len(value) > len("reward:")):
            raise ValueError(f"--judge {value!r}: use exact or reward:DIR")
        return value

    @model_validator(mode="after")
    def _server_or_db(self):
        if (self.server is None) == (self.db is None):
            raise ValueError("give --server (run battles there) or --db (print a stored leaderboard)")
        if self.db is not None and not self.db.is_file():
            raise ValueError(f"db {self.db}: no such file")
        return self
