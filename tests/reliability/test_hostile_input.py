"""Hostile input on every route, the vLLM-shaped ones included: a 4xx in OpenAI's shape, never a
500 or a reset connection, and the server serves on."""

import json
import os

import httpx
import pytest

from tests.helpers import MODEL, assert_openai_error, assert_still_serving

pytestmark = pytest.mark.engine

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


def chat(**fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **fields}


OUT_OF_RANGE = [
    ("seed above int64", CHAT, chat(seed=2**64), "seed"),
    ("seed below int64", CHAT, chat(seed=-(2**64)), "seed"),
    ("max_tokens 2^70", CHAT, chat(max_tokens=2**70), "max_tokens"),
    ("max_completion_tokens 2^40", CHAT, chat(max_completion_tokens=2**40), "max_completion_tokens"),
    ("completions max_tokens 2^70", COMPLETIONS, {"model": MODEL, "prompt": "hi", "max_tokens": 2**70}, "max_tokens"),
    ("n 10^20", CHAT, chat(n=10**20, temperature=1), "n"),
    ("top_k 2^70", CHAT, chat(top_k=2**70), "top_k"),
    ("min_tokens 2^40", CHAT, chat(min_tokens=2**40), "min_tokens"),
    ("logit_bias id outside the vocabulary", CHAT, chat(logit_bias={"99999999": 1}), None),
    ("logit_bias id 2^80", CHAT, chat(logit_bias={str(2**80): 1}), None),
    ("stop_token_ids 2^70", CHAT, chat(stop_token_ids=[2**70]), None),
    ("stop_token_ids negative", CHAT, chat(stop_token_ids=[-5]), None),
    ("token prompt 2^70", COMPLETIONS, {"model": MODEL, "prompt": [2**70]}, "prompt"),
    ("token prompt negative", COMPLETIONS, {"model": MODEL, "prompt": [-1]}, "prompt"),
    ("best_of 10^9", COMPLETIONS, {"model": MODEL, "prompt": "hi", "best_of": 10**9}, "best_of"),
    ("vLLM unload with a 2^70 id", "/v1/unload_lora_adapter", {"lora_name": "nope", "lora_int_id": 2**70}, None),
    ("logit_bias key a superscript digit", CHAT, chat(logit_bias={"\u00b2": 1}), "logit_bias"),  # str.isdigit() took it: a 500
    ("stop_token_ids past the cap", CHAT, chat(stop_token_ids=list(range(300))), "stop_token_ids"),
    ("bad_words past the cap", CHAT, chat(bad_words=["x"] * 300), "bad_words"),
    ("messages past the cap", "/tokenize", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}] * 1100}, "messages"),
    ("prompts past the cap", COMPLETIONS, {"model": MODEL, "prompt": [[1]] * 129, "max_tokens": 1}, "prompt"),
    ("tools past the cap", CHAT, chat(tools=[{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]), "tools"),
    ("arena messages not messages", "/v1/arena/battles", {"messages": [{"foo": 1}]}, None),  # a 500 before
]


@pytest.mark.parametrize("name,path,body,param", OUT_OF_RANGE, ids=[c[0] for c in OUT_OF_RANGE])
def test_out_of_range_values_are_400(http, name, path, body, param):
    response = http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert_openai_error(response, 400, param)
    assert_still_serving(http)


NESTED = "[" * 100_000 + "]" * 100_000  # json.loads() of it raised RecursionError: a 500


@pytest.mark.parametrize("path,body", [
    (CHAT, chat(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": NESTED}}]}, {"role": "tool", "tool_call_id": "c1", "content": "ok"}])),
    ("/v1/responses", {"model": MODEL, "max_output_tokens": 2, "input": [
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": NESTED}, {"type": "function_call_output", "call_id": "c1", "output": "ok"}]}),
], ids=["chat tool_calls", "responses function_call"])
def test_deeply_nested_tool_call_arguments_are_not_a_500(http, path, body):
    response = http.post(path, json=body)
    assert response.status_code < 500, response.text
    assert_still_serving(http)


@pytest.fixture(scope="module")
def special_adapters(adapter_root):
    """Adapter directories under the root whose files the OS serves strangely."""
    made = {}
    for name, target in {"devzero": "/dev/zero", "proc": "/proc/self/environ"}.items():
        path = adapter_root / f"special-{name}"
        path.mkdir(exist_ok=True)
        config = path / "adapter_config.json"
        config.unlink(missing_ok=True)
        config.symlink_to(target)
        made[name] = path
    fifo_dir = adapter_root / "special-fifo"
    fifo_dir.mkdir(exist_ok=True)
    if not (fifo_dir / "adapter_config.json").exists():
        os.mkfifo(fifo_dir / "adapter_config.json")
    made["fifo"] = fifo_dir
    weights = adapter_root / "special-proc-weights"
    weights.mkdir(exist_ok=True)
    (weights / "adapter_config.json").write_text((adapter_root / "dates" / "adapter_config.json").read_text())
    (weights / "adapter_model.safetensors").unlink(missing_ok=True)
    (weights / "adapter_model.safetensors").symlink_to("/proc/self/environ")
    made["proc-weights"] = weights
    return made


BAD_PATHS = [
    ("too long", lambda s: "a" * 5000, "File name too long"),
    ("component too long", lambda s: "x" * 300, "File name too long"),
    ("NUL byte", lambda s: "a\x00b", "embedded null byte"),
    ("home of an unknown user", lambda s: "~no-such-user-0/adapter", "Could not determine home directory"),  # found by fuzzing
    ("config is /dev/zero", lambda s: str(s["devzero"]), "not a regular file"),
    ("config is a FIFO", lambda s: str(s["fifo"]), "not a regular file"),
    ("config is a /proc file", lambda s: str(s["proc"]), "not valid JSON"),
    ("weights are a /proc file", lambda s: str(s["proc-weights"]), "not a valid safetensors file"),
    ("/proc itself", lambda s: "/proc/self", "outside the allowed adapter roots"),
    ("/dev/zero itself", lambda s: "/dev/zero", "outside the allowed adapter roots"),
]


@pytest.mark.parametrize("route", ["tuneserve", "vllm"])
@pytest.mark.parametrize("name,path,message", BAD_PATHS, ids=[c[0] for c in BAD_PATHS])
def test_paths_the_os_rejects_are_400(http, special_adapters, route, name, path, message):
    value = path(special_adapters)
    if route == "tuneserve":
        response = http.post("/v1/adapters", json={"name": "hostile", "path": value})
    else:
        response = http.post("/v1/load_lora_adapter", json={"lora_name": "hostile", "lora_path": value})
    error = assert_openai_error(response, 400, "path")
    assert message in error["message"]
    assert len(error["message"]) < 400  # a 5000-character path is not echoed back whole
    assert_still_serving(http)


RAW_BODIES = [
    ("invalid UTF-8", b'{"model": "\xff\xfe", "messages": []}'),
    ("deeply nested array", b'{"model": "x", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("deeply nested object", b'{"model": "x", "metadata": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}"),
    ("NaN literal", b'{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'),
    ("not JSON at all", b"\x00\x01\x02 binary"),
    ("empty body", b""),
]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS, "/v1/adapters", "/v1/load_lora_adapter"])
@pytest.mark.parametrize("name,content", RAW_BODIES, ids=[c[0] for c in RAW_BODIES])
def test_malformed_bodies_are_400_on_every_route(http, path, name, content):
    response = http.post(path, content=content, headers={"content-type": "application/json"})
    assert_openai_error(response, 400)
    assert_still_serving(http)


def test_hostile_input_summary(http, special_adapters, record):
    """One pass over every case above for the reliability table (each kind also has its own test)."""
    statuses = []
    with httpx.Client(base_url=str(http.base_url), headers=http.headers, timeout=60) as client:
        for _, path, body, _ in OUT_OF_RANGE:
            statuses.append(client.post(path, content=json.dumps(body), headers={"content-type": "application/json"}).status_code)
        for _, path, _ in BAD_PATHS:
            value = path(special_adapters)
            statuses.append(client.post("/v1/adapters", json={"name": "hostile", "path": value}).status_code)
            statuses.append(client.post("/v1/load_lora_adapter", json={"lora_name": "hostile", "lora_path": value}).status_code)
        for route in (CHAT, COMPLETIONS, "/v1/adapters", "/v1/load_lora_adapter"):
            for _, content in RAW_BODIES:
                statuses.append(client.post(route, content=content, headers={"content-type": "application/json"}).status_code)
    assert statuses == [400] * (len(OUT_OF_RANGE) + 2 * len(BAD_PATHS) + 4 * len(RAW_BODIES))
    record("hostile input: out-of-range values and caps, OS-rejected paths (too long, NUL, /dev/zero, FIFO, /proc), "
           "invalid UTF-8, deep nesting, NaN, empty bodies", len(statuses), "every one a 400 in OpenAI's shape, server kept serving",
           "0 5xx, 0 connection resets")
