"""Start-up checks that need no engine: KV-cache sizing and the exposed-host warning."""

import logging

import pytest

from tuneserve.models import resolve_model
from tuneserve.server.memory import GIB, MAX_DEFAULT_KV_CACHE_GIB, RUNTIME_OVERHEAD_GIB, plan_kv_cache
from tuneserve.server.startup import StartupError, warn_if_exposed


@pytest.fixture(scope="module")
def model_dir():
    return resolve_model(None)


def test_plenty_of_memory_gives_the_capped_default(model_dir):
    plan = plan_kv_cache(model_dir, "auto", None, None, available_bytes=64 * GIB)
    assert plan.kv_cache_bytes == MAX_DEFAULT_KV_CACHE_GIB * GIB and plan.is_default
    # SmolLM2-135M: 30 layers x 3 KV heads x 64 dims x K and V x 2 bytes = 23,040 bytes a token
    assert plan.num_tokens == int(plan.kv_cache_bytes // 23_040)


def test_busy_machine_gets_half_of_what_is_left(model_dir):
    plan = plan_kv_cache(model_dir, "auto", None, None, available_bytes=4 * GIB)
    headroom = 4 * GIB - plan.weights_bytes - RUNTIME_OVERHEAD_GIB * GIB
    assert abs(plan.kv_cache_bytes - headroom / 2) < (1 << 20)
    assert plan_kv_cache(model_dir, "float32", None, None, available_bytes=64 * GIB).num_tokens == plan_kv_cache(
        model_dir, "auto", None, None, available_bytes=64 * GIB).num_tokens // 2  # 4 bytes a value


def test_too_little_memory_names_the_fix(model_dir):
    with pytest.raises(StartupError, match="not enough memory.*lower --max-model-len"):
        plan_kv_cache(model_dir, "auto", None, None, available_bytes=int(1.5 * GIB))
    with pytest.raises(StartupError, match="lower --kv-cache-gib"):
        plan_kv_cache(model_dir, "auto", None, 8.0, available_bytes=4 * GIB)
    # a shorter context still fits where the model's full 8192 tokens would not
    assert plan_kv_cache(model_dir, "auto", 512, None, available_bytes=int(1.8 * GIB)).num_tokens >= 512


@pytest.mark.parametrize("host,warns", [("0.0.0.0", True), ("10.1.2.3", True), ("127.0.0.1", False), ("::1", False), ("localhost", False)])
def test_binding_beyond_loopback_without_keys_warns(caplog, host, warns):
    with caplog.at_level(logging.WARNING, logger="tuneserve.server"):
        warn_if_exposed(host, has_keys=False)
        warn_if_exposed(host, has_keys=True)
    assert len(caplog.records) == (1 if warns else 0)
