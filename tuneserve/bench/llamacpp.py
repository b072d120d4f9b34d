"""llama.cpp's own HTTP server (the `xllamacpp` wheel embeds it) as a bench peer: the engine Ollama
and LM Studio run, on a GGUF that `tuneserve optimize export` wrote, with the same threads.

    python -m tuneserve.bench.llamacpp MODEL.gguf --port 8001 --threads 2 --parallel 16 --ctx 2048

Serves OpenAI's /v1/chat/completions and /v1/completions and /health until SIGTERM or SIGINT.
"""

import argparse
import os
import signal
import sys
from pathlib import Path

from tuneserve.engine.llamacpp import server_params


def gguf_path(model: str) -> Path:
    """The GGUF file of `model`: a .gguf file, or a `tuneserve optimize export` output directory."""
    path = Path(model)
    if path.is_dir() and (path / "model.gguf").is_file():
        return path / "model.gguf"
    if path.suffix == ".gguf" and path.is_file():
        return path
    raise ValueError(f"engine llamacpp serves a GGUF file: {model} is not one nor a directory with model.gguf "
                     "(make one with `tuneserve optimize export --type bf16 --out DIR`)")


def command(values: dict, port: int, parallel: int) -> list[str]:
    """The peer's command for a setting's serve values (model, max_model_len, cpu_threads)."""
    return [sys.executable, "-m", "tuneserve.bench.llamacpp", str(gguf_path(values["model"])), "--port", str(port),
            "--threads", str(values.get("cpu_threads") or len(os.sched_getaffinity(0))),
            "--parallel", str(parallel), "--ctx", str(values.get("max_model_len") or 2048)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="GGUF file or `tuneserve optimize export` directory")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--parallel", type=int, default=1, help="request slots (continuous batching)")
    parser.add_argument("--ctx", type=int, default=2048, help="context per slot")
    args = parser.parse_args(argv)
    try:
        params = server_params(gguf_path(args.model), args.ctx, args.parallel, args.threads, verbose=True)
        import xllamacpp as xlc
    except (ValueError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    params.endpoint_metrics = True
    server = xlc.Server(params)  # serves from its own threads
    print(f"llama.cpp serving {args.model} on {server.listening_address} ({args.threads} threads, "
          f"{args.parallel} slots)", flush=True)
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(flag=True))
    while not stop["flag"]:
        signal.pause()
    del server


if __name__ == "__main__":
    main()
