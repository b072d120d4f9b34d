"""The options of `tuneserve bench ...`, declared once (tuneserve/options.py builds the flags).

`bench run`'s flags are the simple case: they override the matrix file (or make a one-setting
matrix without one); the matrix itself is a `BenchMatrix`."""

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneserve.bench.config import BenchMatrix
from tuneserve.bench.metrics import parse_slo
from tuneserve.config import ConfigError, describe_validation_error, load_config


class RunOptions(BaseModel):
    """Start each setting's server exactly as `tuneserve serve`, load it, write results and a report.

    Examples:
      tuneserve bench run examples/bench/cpu.yaml
      tuneserve bench run --url http://127.0.0.1:8000 --request-rate 2 --request-rate 8 --repeat 3
    """

    model_config = ConfigDict(extra="forbid")

    matrix: Path | None = Field(None, description="Bench matrix YAML (see examples/bench/).")
    out: Path | None = Field(None, description="Result directory (default bench-results/NAME-TIME).")
    url: str | None = Field(None, description="Measure this running server instead of starting one per setting.")
    model: str | None = Field(None, description="Model (without a matrix: the one setting's model).")
    repeat: int | None = Field(None, ge=1, description="Runs per setting and rate (default 3).")
    rounds: int | None = Field(None, ge=1, le=20, description="Passes over all settings, servers started afresh, "
                               "settings interleaved against drift in machine speed (default 1).")
    num_prompts: int | None = Field(None, ge=1, description="Requests per run.")
    input_len: int | None = Field(None, ge=1, description="Synthetic prompt length (words).")
    output_len: int | None = Field(None, ge=1, description="Output tokens per request.")
    request_rate: list[float] = Field(default_factory=list, description="Requests/s; repeat to sweep (default inf).")
    max_concurrency: int | None = Field(None, ge=1, description="Most requests in flight.")
    slo: str | None = Field(None, description="Goodput SLOs: ttft_ms=500,tpot_ms=50.")
    api_key: str | None = Field(None, json_schema_extra={"envvar": "TUNESERVE_API_KEY"}, description="Bearer key for the servers.")
    overwrite: bool = Field(False, description="Replace an existing output directory.")


class ReportOptions(BaseModel):
    """Rebuild the table, plots and HTML page of a result directory.

    Examples:
      tuneserve bench report bench-results/cpu-20261126-1200
      tuneserve bench report docs/bench/cpu --into README.md
    """

    model_config = ConfigDict(extra="forbid")

    run_dir: Path = Field(description="A `bench run` result directory.")
    into: Path | None = Field(None, description="Also write the table into this markdown file, between <!-- bench:NAME --> "
                                                "and <!-- /bench:NAME --> (NAME: the run's name).")


class CompareOptions(BaseModel):
    """Show B against A per setting; exit 1 when a fail_if rule is broken (for CI).

    Example: tuneserve bench compare main.json pr.json --fail-if "output_throughput<0.95x"
    """

    model_config = ConfigDict(extra="forbid")

    a: Path = Field(description="Baseline: result JSON, summary.json or result directory.")
    b: Path = Field(description="Candidate, same forms.")
    fail_if: list[str] = Field(default_factory=list, description='Regression rule: "output_throughput<0.95x", "p99_ttft_ms>1.10x", '
                                                                 '"failed>0" (repeatable).')


def matrix_from(options: RunOptions) -> BenchMatrix:
    """The matrix to run: the file's (or one default setting), with the flags of the simple case over it."""
    base = {"settings": [{"name": "default"}]} if options.matrix is None else {}
    matrix = load_config(BenchMatrix, options.matrix, **base, model=options.model, repeat=options.repeat,
                         rounds=options.rounds)
    data = matrix.model_dump()
    workload = {"num_prompts": options.num_prompts, "input_len": options.input_len, "output_len": options.output_len}
    data["workload"] |= {k: v for k, v in workload.items() if v is not None}
    if options.request_rate:
        data["load"]["request_rates"] = options.request_rate
    if options.max_concurrency:
        data["load"]["max_concurrency"] = options.max_concurrency
    if options.slo:
        data["slo"] = parse_slo(options.slo)
    if options.url:
        data["settings"] = [s | {"url": options.url} for s in data["settings"]]
    if options.api_key:
        data["settings"] = [s | {"api_key": s["api_key"] or options.api_key} for s in data["settings"]]
    try:
        return BenchMatrix.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e)) from None
