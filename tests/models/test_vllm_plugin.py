"""tuneserve's vLLM plugin: installed on the vLLM it was verified on, stepping aside on others,
and the LoRA-ops choice read from the environment the server sets."""

import pytest
from vllm.platforms.cpu import CpuPlatform

from tuneserve.engine import plugin as vllm_plugin
from tuneserve.engine.plugin import LORA_KERNELS_ENV as ENV


def test_on_an_unverified_vllm_nothing_is_patched_and_it_says_so(monkeypatch):
    warnings = []
    monkeypatch.setattr(vllm_plugin, "vllm_version", lambda: "0.99.0")
    monkeypatch.setattr(vllm_plugin.logger, "warning", lambda msg, *args: warnings.append(msg % args))
    for name in ("_patch_cpu_lora_logits", "_install_cpu_lora_kernels", "_warm_up_cpu_pipeline_stages"):
        monkeypatch.setattr(vllm_plugin, name, lambda: pytest.fail("patched an unverified vLLM"))
    vllm_plugin.register()
    assert not vllm_plugin.plugin_active()
    assert len(warnings) == 1 and "0.99.0" in warnings[0] and "vLLM's own code runs" in warnings[0]


def test_the_cpu_punica_wrapper_follows_the_lora_kernels_choice(monkeypatch):
    vllm_plugin._install_cpu_lora_kernels()  # what register() does in every engine process
    vllm_plugin._install_cpu_lora_kernels()  # twice is harmless
    monkeypatch.delenv(ENV, raising=False)
    assert CpuPlatform.get_punica_wrapper() == "tuneserve.engine.lora_ops.GroupedPunicaWrapperCPU"
    monkeypatch.setenv(ENV, "vllm")
    assert CpuPlatform.get_punica_wrapper() == "vllm.lora.punica_wrapper.punica_cpu.PunicaWrapperCPU"
    monkeypatch.setenv(ENV, "fast")
    with pytest.raises(ValueError, match=ENV):
        CpuPlatform.get_punica_wrapper()


def test_cpu_pipeline_stages_get_their_receive_buffers(monkeypatch):
    """The end-to-end check (PP=2 answers like one process) is in tests/server/test_parallel_engine.py."""
    from types import SimpleNamespace

    from vllm.config import CompilationMode
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.cpu_worker import CPUWorker

    vllm_plugin._warm_up_cpu_pipeline_stages()
    vllm_plugin._warm_up_cpu_pipeline_stages()  # twice is harmless

    def worker(pipeline_size):  # eager with an explicit KV-cache size: vLLM skips the warm-up
        return SimpleNamespace(compilation_config=SimpleNamespace(mode=CompilationMode.NONE),
                               cache_config=SimpleNamespace(kv_cache_memory_bytes=1 << 30),
                               parallel_config=SimpleNamespace(pipeline_parallel_size=pipeline_size))

    assert not CPUWorker._should_warm_up_model(worker(1))
    assert CPUWorker._should_warm_up_model(worker(2))
    made = []
    runner = SimpleNamespace(
        vllm_config=SimpleNamespace(compilation_config=SimpleNamespace(mode=CompilationMode.NONE)), intermediate_tensors=None,
        max_num_tokens=8, model_config=SimpleNamespace(dtype="float32"), device="cpu",
        model=SimpleNamespace(make_empty_intermediate_tensors=lambda **kw: made.append(kw) or "buffers"),
    )
    monkeypatch.setattr("vllm.distributed.parallel_state.get_pp_group", lambda: SimpleNamespace(is_first_rank=False))
    CPUModelRunner.warming_up_model(runner)  # eager: vLLM's own warm-up returns at once
    assert runner.intermediate_tensors == "buffers" and made[0]["batch_size"] == 8


def test_kv_event_publishers_bind_loopback_addresses():
    """Fix 7: vllm-router connects to each engine's event port, so the engine must bind it; vLLM
    connected to any address but a wildcard, and the wildcard publishes prompts on every interface."""
    from vllm.distributed.kv_events import ZmqEventPublisher

    vllm_plugin._bind_loopback_kv_event_endpoints()
    vllm_plugin._bind_loopback_kv_event_endpoints()  # twice is harmless
    binds = ZmqEventPublisher._is_bind_endpoint
    assert binds("tcp://127.0.0.1:5557") and binds("tcp://localhost:5557")
    assert binds("tcp://*:5557") and binds("ipc:///tmp/events")  # vLLM's own rule, kept
    assert not binds("tcp://10.0.0.5:5557")  # a remote subscriber that binds is still connected to


def test_the_engine_core_forks_until_this_process_has_an_openmp_pool():
    """Plugin change 8: a forked child's first OpenMP region waits forever for the parent's pool
    threads, so a process that ran one (training, a guard classifier) spawns its engine core."""
    import os
    import subprocess
    import sys

    script = (
        "import os, torch\n"
        "from tuneserve.engine.plugin import engine_core_start_method\n"
        "method = lambda: engine_core_start_method(os.environ.get('VLLM_WORKER_MULTIPROC_METHOD'))\n"
        "before = method()\n"
        "torch.set_num_threads(2); a = torch.randn(512, 512); a @ a\n"
        "print(before, method())\n"
    )

    def run(**env):
        clean = {k: v for k, v in os.environ.items() if k != "VLLM_WORKER_MULTIPROC_METHOD"}
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                             env=clean | {"OMP_NUM_THREADS": "2"} | env)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.split()

    assert run() == ["fork", "spawn"]
    assert run(VLLM_WORKER_MULTIPROC_METHOD="spawn") == ["spawn", "spawn"]  # as asked
    assert run(VLLM_WORKER_MULTIPROC_METHOD="fork") == ["fork", "spawn"]  # never into a hang
