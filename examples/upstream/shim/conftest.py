"""Maps the hub model names vLLM's tests load tokenizers for onto the local model tuneserve serves.

Older test files import `vllm.transformers_utils.tokenizer`, which vLLM 0.32 moved to
`vllm.tokenizers`: the old name is aliased so that those files import.
"""

import os
import sys
import types

import pytest


def _local_model() -> str:
    from tuneserve.models import resolve_model

    return str(resolve_model(os.environ.get("TUNESERVE_UPSTREAM_MODEL", "smollm2-135m-instruct")))


def _get_tokenizer(tokenizer_name=None, *args, **kwargs):
    from vllm.tokenizers import get_tokenizer

    kwargs.pop("tokenizer_mode", None)
    return get_tokenizer(_local_model(), *args, **kwargs)


if "vllm.transformers_utils.tokenizer" not in sys.modules:
    try:
        import vllm.transformers_utils.tokenizer  # noqa: F401
    except ImportError:
        alias = types.ModuleType("vllm.transformers_utils.tokenizer")
        alias.get_tokenizer = _get_tokenizer
        sys.modules["vllm.transformers_utils.tokenizer"] = alias


@pytest.fixture(autouse=True, scope="session")
def _local_tokenizers():
    import transformers

    local = _local_model()
    original = transformers.AutoTokenizer.from_pretrained.__func__
    transformers.AutoTokenizer.from_pretrained = classmethod(lambda cls, name, *a, **k: original(cls, local, *a, **k))
    sys.modules["vllm.transformers_utils.tokenizer"].get_tokenizer = _get_tokenizer
    yield
