"""`tuneserve serve --replicas 2`: two real servers behind the real vLLM router (vllm-router), on
loopback. The openai client works unchanged on the router's port; keys apply at every replica;
a replica killed under load is retried around and restarted; adapters stay where a session key
sends them."""

import concurrent.futures
import os
import re
import shutil
import signal
import sys
import time

import httpx
import openai
import pytest

from tests.helpers import ADAPTERS, ADMIN_KEY, INFERENCE_KEY, MODEL, metric, read_metrics
from tuneserve.server import free_port, launch, replica_ports, stop_server

pytestmark = pytest.mark.engine

KEYS_YAML = f"""
keys:
  - {{name: admin, key: {ADMIN_KEY}, scopes: [inference, admin]}}
  - {{name: tenant-a, key: {INFERENCE_KEY}, scopes: [inference], models: ["smollm2-*", "dates"]}}
"""
DATE_PROMPT = "Rewrite the date 3 March 2001 in ISO format (YYYY-MM-DD). Answer with the date only."


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replicas")
    (tmp / "keys.yaml").write_text(KEYS_YAML)
    root = tmp / "adapters"
    root.mkdir()
    for name in ("a1", "a2", "a3", "a4"):
        shutil.copytree(ADAPTERS["dates"], root / name)  # links out of a root are refused
    port = free_port()
    while any(_busy(p) for p in replica_ports(port, 2)):
        port = free_port()
    cmd = [sys.executable, "-m", "tuneserve", "serve", "--model", MODEL, "--port", str(port), "--replicas", "2",
           "--max-model-len", "1024", "--max-num-seqs", "16", "--api-keys", str(tmp / "keys.yaml"),
           "--adapter-root", str(root), "--drain-timeout-s", "20"]
    server = launch(cmd, port, tmp, env={"TUNESERVE_HOME": str(tmp / "home")}, ready_path="/health")
    yield server, [f"http://127.0.0.1:{p}" for p in replica_ports(port, 2)]
    stop_server(server, timeout_s=120)


def _busy(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def client(server, key=ADMIN_KEY, **headers) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=300, default_headers=headers)


def burst(c: openai.OpenAI, n: int) -> list:
    """`n` short chats at once (sequential requests all go where their prefix is cached)."""
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda i: c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Say hi to guest {i}."}], max_tokens=4), range(n)))


def served(url: str) -> float:
    """Requests this replica finished (any status), from its own /metrics."""
    samples = read_metrics(httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}))
    return metric(samples, "tuneserve_requests_total")


def test_the_openai_client_works_unchanged_on_the_routers_port(replicated):
    server, replicas = replicated
    c = client(server)
    assert MODEL in [m.id for m in c.models.list().data]
    replies = burst(c, 8)  # 8 at once: past the router's balance threshold (a quarter of --max-num-seqs)
    assert all(reply.choices[0].message.content for reply in replies)
    chunks = list(c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Count to three."}],
                                            max_tokens=8, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert all(served(url) > 0 for url in replicas)  # both replicas took requests


def test_the_dashboards_router_series_are_exported_by_the_router(replicated):
    from tests.deploy.monitoring import ROUTER_PREFIX, dashboard_queries, metric_names, served_names

    server, replicas = replicated
    burst(client(server), 4)
    port = re.search(r"its metrics on 127\.0\.0\.1:(\d+)", server.log_path.read_text())[1]
    exported = served_names(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
    queried = {name for _, expr in dashboard_queries() for name in metric_names(expr) if name.startswith(ROUTER_PREFIX)}
    assert queried and queried <= exported, sorted(queried - exported)
    samples = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert all(f'worker="{url}"' in samples for url in replicas)


def test_keys_apply_at_every_replica(replicated):
    server, _ = replicated
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    for _ in range(4):  # tenant-a may not use adapters outside its globs, whichever replica answers
        with pytest.raises(openai.PermissionDeniedError):
            client(server, INFERENCE_KEY).chat.completions.create(model="a1", messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def test_a_session_key_keeps_each_adapter_on_one_replica(replicated):
    """vllm-router's cache_aware policy keeps a session (X-Session-ID) on one replica: with the
    adapter's name as the session, each adapter is loaded by one replica only."""
    server, replicas = replicated
    before = sum(_jit_loads(url) for url in replicas)
    for round_ in range(3):
        for name in ("a1", "a2", "a3", "a4"):
            reply = client(server, **{"X-Session-ID": name}).chat.completions.create(
                model=name, messages=[{"role": "user", "content": f"{DATE_PROMPT} ({round_})"}], temperature=0, max_tokens=12)
            assert reply.choices[0].message.content.strip() == "2001-03-03"
    assert sum(_jit_loads(url) for url in replicas) - before == 4  # one load per adapter, not one per replica


def _jit_loads(url: str) -> float:
    samples = read_metrics(httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}))
    return sum(v for (name, labels), v in samples.items() if name == "tuneserve_adapter_loads_total" and ("source", "jit") in labels)


def test_a_replica_killed_under_load_is_retried_around_restarted_and_rejoins(replicated):
    server, replicas = replicated
    c = client(server)
    victim = _pid_listening(replicas[1])
    results = []

    def ask(i):
        try:
            c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"Tell me a fact about the number {i}."}],
                                      max_tokens=24)
            return None
        except openai.APIError as e:
            return f"{type(e).__name__}: {e}"

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(ask, i) for i in range(64)]
        time.sleep(3)  # requests in flight on both replicas
        os.killpg(os.getpgid(victim), signal.SIGKILL)  # the replica and its engine processes, as a lost node
        results = [f.result() for f in futures]
    assert [r for r in results if r] == []  # the router retried every request the dead replica dropped
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # the supervisor restarts it on the same port
        try:
            if httpx.get(f"{replicas[1]}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    else:
        raise AssertionError("the killed replica did not come back")
    assert _pid_listening(replicas[1]) != victim
    before = served(replicas[1])
    deadline = time.monotonic() + 60
    while served(replicas[1]) == before and time.monotonic() < deadline:  # back in the router's rotation
        burst(c, 8)
    assert served(replicas[1]) > before
    assert re.search(r"replica 1 exited with -?\d+; restarting it", server.log_path.read_text())


def _pid_listening(url: str) -> int:
    import psutil

    port = int(url.rsplit(":", 1)[1])
    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            return conn.pid
    raise AssertionError(f"nothing listens on {port}")


def test_kv_aware_subscribes_the_router_to_each_replicas_kv_events():
    """--router-policy kv_aware: one event source per replica, the engine's block size and the
    served model, as vllm-router's own parser accepts them (the engine side publishes:
    test_limits_and_drain.py reads its events)."""
    from tuneserve.server.config import ServeConfig
    from tuneserve.server.replicas import check_router_flags, router_command

    config = ServeConfig(replicas=2, router_policy="kv_aware", port=8000)
    urls, endpoints = ["http://127.0.0.1:8001", "http://127.0.0.1:8002"], ["tcp://127.0.0.1:9001", "tcp://127.0.0.1:9002"]
    cmd = router_command(config, urls, 9100, endpoints, block_size=128)
    check_router_flags(cmd)
    sources = [cmd[i + 1] for i, flag in enumerate(cmd) if flag == "--kv-event-source"]
    assert sources == [f"{u}={e}" for u, e in zip(urls, endpoints, strict=True)]
    assert cmd[cmd.index("--kv-event-block-size") + 1] == "128" and cmd[cmd.index("--kv-event-model") + 1] == MODEL
    assert "--kv-event-source" not in router_command(config.model_copy(update={"router_policy": "cache_aware"}), urls, 9100)


def test_llamacpp_replicas_start_from_settings_their_engine_serves():
    """--engine llamacpp --replicas N: each replica's settings leave out what only vLLM serves (the
    default LoRA switch, the KV-cache share), which a replica would otherwise refuse at start."""
    from tuneserve.server.config import ServeConfig
    from tuneserve.server.replicas import replica_values

    values, groups = replica_values(ServeConfig(engine="llamacpp", replicas=2, gguf_type="q8_0"))
    replica = ServeConfig(**values)
    assert replica.engine == "llamacpp" and replica.gguf_type == "q8_0" and replica.kv_cache_gib is None
    assert len(groups) == 2
    # an explicit KV cache: the default would be planned from the memory free while this module's replicas run
    vllm_values = replica_values(ServeConfig(replicas=2, kv_cache_gib=1))[0]
    assert ServeConfig(**vllm_values).engine == "vllm" and "gguf_type" not in vllm_values  # and nothing llama.cpp's
