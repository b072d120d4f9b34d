"""Helpers the tests share (fixtures live in conftest.py)."""

import httpx

MODEL = "smollm2-135m-instruct"


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None, code: str | None = None):
    """The response is an OpenAI-shaped error with this status (and param/code when given)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


def chat_body(content: str = "What is the capital of France?", **kwargs) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **kwargs}


def assert_still_serving(http: httpx.Client) -> None:
    """A normal request succeeds right after the failed one."""
    response = http.post("/v1/chat/completions", json=chat_body(max_tokens=8, temperature=0))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    assert http.get("/health").status_code == 200


def read_metrics(http: httpx.Client) -> dict[tuple[str, frozenset], float]:
    """Parse /metrics with prometheus_client's own text parser: {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    response = http.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def metric(samples: dict, name: str) -> float:
    """Sum of one series over all label sets."""
    return sum(v for (n, _), v in samples.items() if n == name)
