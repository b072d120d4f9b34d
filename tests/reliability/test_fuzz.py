"""Schema fuzzing of every endpoint from the server's own OpenAPI document (schemathesis).

Valid and invalid requests for each operation: zero 5xx, every error in OpenAI's shape.
`make test` sends at least 900 requests (50 of each mode per operation); `make test-slow` (and
`make reliability`) at least 10,000.
"""

import collections
import shutil

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

from tests.conftest import start_server
from tests.helpers import ADAPTERS
from tuneserve.server.process import stop_server

pytestmark = pytest.mark.engine

OPENAI_ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    """A server that keeps generation cheap (8 tokens at most), with LoRA and an adapter root."""
    root = tmp_path_factory.mktemp("fuzz-adapters")
    shutil.copytree(ADAPTERS["dates"], root / "dates")
    running = start_server(tmp_path_factory.mktemp("fuzz"), "--max-tokens-cap", "8", "--request-timeout-s", "60",
                           "--adapter-root", str(root), "--adapter", f"dates={root / 'dates'}")
    yield running
    stop_server(running)


def is_openai_error(response: requests.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and set(body) == {"error"} and set(body["error"]) == OPENAI_ERROR_KEYS


def fuzz(base_url: str, examples_per_mode: int) -> dict:
    import schemathesis
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    tally: dict = {"requests": 0, "by_status": collections.Counter(), "failures": []}
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples_per_mode, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            def run(case):
                response = case.call(base_url=base_url, session=session, timeout=120)
                tally["requests"] += 1
                tally["by_status"][response.status_code] += 1
                is_ok = response.status_code < 500 and (response.status_code < 400 or is_openai_error(response))
                if not is_ok:
                    tally["failures"].append(f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}")

            try:
                run()
            except Unsatisfiable:  # no invalid request exists for an operation without inputs (GET /health)
                assert mode == GenerationMode.NEGATIVE
    return tally


def check_and_record(tally: dict, minimum: int, record) -> None:
    assert tally["failures"] == [], "\n".join(tally["failures"][:20])
    assert tally["requests"] >= minimum
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(tally["by_status"].items()))
    record("schema fuzzing (schemathesis, valid and invalid requests for every operation)", tally["requests"],
           "0 5xx; every error in OpenAI's shape", statuses)


def test_fuzzing_every_endpoint_finds_no_5xx(fuzz_server, record):
    # 50 per mode and operation keeps `make test` in budget; the slow run below goes 18x wider.
    tally = fuzz(fuzz_server.base_url, examples_per_mode=50)
    check_and_record(tally, 900, record)


@pytest.mark.slow
def test_fuzzing_at_scale_finds_no_5xx(fuzz_server, record):
    tally = fuzz(fuzz_server.base_url, examples_per_mode=900)
    check_and_record(tally, 10_000, record)
