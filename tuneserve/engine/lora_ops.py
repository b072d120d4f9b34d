"""vLLM's CPU punica wrapper with tuneserve's grouped LoRA ops (`lora_kernels`) in its hot paths.

Installed by the vLLM plugin (`engine/plugin.py`) as the CPU platform's punica wrapper unless
`TUNESERVE_LORA_KERNELS=vllm` (`tuneserve serve --lora-kernels vllm`). Every method keeps the
contract of vLLM's `PunicaWrapperCPU`; a call whose shapes this wrapper was not built for (rows
that are not one per token or per request) goes to vLLM's own method.
"""

from __future__ import annotations

import logging

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from tuneserve.engine.lora_kernels import LoraPlan, WeightCache, expand, linear, shrink

# A child of vLLM's logger, so the line shows in the engine process's log like vLLM's own.
logger = logging.getLogger("vllm.tuneserve.lora")


class GroupedPunicaWrapperCPU(PunicaWrapperCPU):
    """PunicaWrapperCPU whose linear, embedding and logits LoRA ops run as grouped GEMMs."""

    def __init__(self, max_num_batched_tokens: int, max_batches: int, device: torch.device | str, **kwargs):
        super().__init__(max_num_batched_tokens, max_batches, device, **kwargs)
        self.cache = WeightCache()
        self._token_plan: LoraPlan | None = None
        self._sampler_plan: LoraPlan | None = None
        logger.info("multi-LoRA ops: tuneserve's grouped GEMMs (opt out: --lora-kernels vllm)")

    def update_metadata(self, *args, **kwargs) -> None:
        super().update_metadata(*args, **kwargs)
        self._token_plan = LoraPlan(self.token_lora_indices)
        self._sampler_plan = None

    def skips(self, layer, x: torch.Tensor) -> bool:
        """True when no adapter of this step changes `layer` (no adapter in the step, or all-zero
        weights for the step's adapters there: an adapter of q and v leaves o_proj and the MLP
        alone). The layer then runs as its base layer: the same output, none of the LoRA path's
        Python. Decided once per layer and step plan (vLLM renews the plan whenever the mapping or
        the slot layout changes, which is when slot weights are written)."""
        plan = self._token_plan
        if plan is None or plan.rows != x.numel() // x.shape[-1]:
            return False
        found = plan.layer_memo.get(id(layer))
        if found is None:
            found = plan.layer_memo[id(layer)] = not any(
                plan.uses_any(self.cache.slots(a, b)) for a, b in zip(layer.lora_a_stacked, layer.lora_b_stacked, strict=True))
        return found

    def _plan(self, rows: int) -> LoraPlan | None:
        """The step's per-token plan, or None when `rows` is not one row per token."""
        plan = self._token_plan
        return plan if plan is not None and plan.rows == rows else None

    def _logits_plan(self, rows: int) -> LoraPlan | None:
        """The step's per-request plan (the sampled rows), or None when `rows` is not one per request."""
        if self._sampler_plan is None:
            self._sampler_plan = LoraPlan(self.sampler_indices)
        return self._sampler_plan if self._sampler_plan.rows == rows else None

    def add_shrink(self, y, x, lora_a_stacked, scale, **kwargs):
        x = x.view(-1, x.shape[-1])
        plan = self._plan(x.size(0))
        if plan is None:
            return super().add_shrink(y, x, lora_a_stacked, scale, **kwargs)
        for out, a in zip(y, lora_a_stacked, strict=True):
            shrink(self.cache, plan, x, a, out.view(-1, out.shape[-1]), scale)

    def add_expand(self, y, x, lora_b_stacked, output_slices, offset_start=0, add_inputs=True, **kwargs):
        rows = y.view(-1, y.shape[-1])
        plan = self._plan(rows.size(0))
        if plan is None:
            return super().add_expand(y, x, lora_b_stacked, output_slices, offset_start, add_inputs, **kwargs)
        offset = offset_start
        for buffer, b, size in zip(x, lora_b_stacked, output_slices, strict=True):
            expand(self.cache, plan, buffer, b, rows, offset, size, add_inputs)
            offset += size

    def add_lora_embedding(self, y, x, lora_b_stacked, add_inputs=True, **kwargs):
        plan = self._plan(x.size(0))
        if plan is None or y.size(0) != x.size(0):
            return super().add_lora_embedding(y, x, lora_b_stacked, add_inputs, **kwargs)
        expand(self.cache, plan, x, lora_b_stacked, y, 0, None, add_inputs)

    def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, *, buffer=None, **kwargs):
        x = x.view(-1, x.shape[-1])
        plan = self._plan(x.size(0))
        if plan is None or scale != 1.0:
            return super().add_lora_linear(y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, buffer=buffer,
                                           **kwargs)
        linear(self.cache, plan, x, lora_a_stacked, lora_b_stacked, output_slices, y.view(-1, y.shape[-1]))

    def add_lora_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale, *, buffer=None, **kwargs):
        rows_y, rows_x = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
        plan = self._logits_plan(rows_x.size(0))
        if plan is None:  # e.g. one request's prompt rows (prompt logprobs)
            return super().add_lora_logits(y, x, lora_a_stacked, lora_b_stacked, scale, buffer=buffer, **kwargs)
        if not plan.uses_any(self.cache.slots(lora_a_stacked, lora_b_stacked)):
            return y  # no adapter in this step touches lm_head
        out = buffer if buffer is not None else torch.zeros((rows_x.size(0), lora_b_stacked.size(-1)), dtype=torch.float32)
        shrink(self.cache, plan, rows_x, lora_a_stacked, out, scale)
        expand(self.cache, plan, out, lora_b_stacked, rows_y, 0, None, True)
        return y
