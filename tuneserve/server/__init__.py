"""The OpenAI-compatible server over vLLM's AsyncLLM, and `tuneserve serve` as a child process."""

from tuneserve.server.config import ServeConfig
from tuneserve.server.main import serve
from tuneserve.server.process import ServerProcess, free_port, launch, start_server, stop_server
from tuneserve.server.replicas import replica_ports, serve_replicas

__all__ = ["ServeConfig", "ServerProcess", "free_port", "launch", "replica_ports", "serve", "serve_replicas", "start_server", "stop_server"]
