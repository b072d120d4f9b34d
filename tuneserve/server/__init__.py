"""The OpenAI-compatible server over vLLM's AsyncLLM."""

from tuneserve.server.config import ServeConfig
from tuneserve.server.main import serve

__all__ = ["ServeConfig", "serve"]
