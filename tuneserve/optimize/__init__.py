"""Optimize: merge adapters, quantize (GPTQ W4A16, SmoothQuant+GPTQ W8A8), prune (SparseGPT), distill, export GGUF, estimate memory."""

from tuneserve.optimize.distill import run_distill
from tuneserve.optimize.errors import OptimizeError
from tuneserve.optimize.estimate import run_estimate
from tuneserve.optimize.export import run_export
from tuneserve.optimize.merge import run_merge
from tuneserve.optimize.prune import run_prune
from tuneserve.optimize.quantize import run_quantize

__all__ = ["OptimizeError", "run_distill", "run_estimate", "run_export", "run_merge", "run_prune", "run_quantize"]
