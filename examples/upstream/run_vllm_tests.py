"""Run vLLM's own OpenAI-server tests against tuneserve.

    .venv/bin/python examples/upstream/run_vllm_tests.py VLLM_CHECKOUT TEST_FILE [TEST_FILE ...] [-- PYTEST_ARGS]

TEST_FILEs are paths inside a vLLM source checkout (for example
tests/entrypoints/openai/chat_completion/test_completion_with_function_calling.py). Each is
copied with the conftest.py files above it into a scratch tree whose `tests/utils.py` is
tuneserve's shim (shim/tests/utils.py): its RemoteOpenAIServer starts `tuneserve serve` on the
local default model under the model name the test uses. Hub tokenizers resolve to that local
model (shim/conftest.py). Then pytest runs the tree and its summary is printed; see README,
"Upstream vLLM tests", for which tests pass and why the others do not.
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SHIM = Path(__file__).parent / "shim"


def build_tree(checkout: Path, test_files: list[str], root: Path) -> list[Path]:
    shutil.copytree(SHIM, root, dirs_exist_ok=True)
    copied = []
    for name in test_files:
        source = checkout / name
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        copied.append(target)
        for parent in Path(name).parents:  # conftest.py files above it (fixtures), not tests/'s own
            if parent == Path("."):
                continue
            (root / parent / "__init__.py").touch()  # vLLM's tests import each other as packages
            conftest = checkout / parent / "conftest.py"
            if parent != Path("tests") and conftest.exists():
                shutil.copy(conftest, root / parent / "conftest.py")
    return copied


def main(argv: list[str]) -> int:
    args, _, pytest_args = " ".join(argv).partition(" -- ")
    checkout, *test_files = args.split()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = build_tree(Path(checkout), test_files, root)
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "asyncio_mode=strict", "--rootdir", str(root), "-q", "-rA", *map(str, files), *pytest_args.split()]
        return subprocess.call(command, cwd=root, env={**__import__("os").environ, "PYTHONPATH": str(root)})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
