"""`tuneserve serve --engine llamacpp`: llama.cpp's server (xllamacpp) behind tuneserve's own API.

One real server on the default model's float32 GGUF (written by the server itself), driven with
the openai client and raw HTTP: the same greedy answers as transformers in float32, streaming and
usage as with vLLM, what llama.cpp cannot do refused by name, a closed stream stopping llama.cpp,
and llama.cpp's own HTTP listener closed to anyone without the key tuneserve never hands out.
"""

import json
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from tests.helpers import MODEL, assert_openai_error, metric, read_metrics
from tuneserve.server.process import start_server, stop_server

QUESTIONS = ["What is the capital of France?", "Name three primary colors.", "Convert 5 km to meters.",
             "Write the date 3 March 2001 in ISO format."]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    running = start_server(tmp_path_factory.mktemp("llamacpp"), "--model", MODEL, "--engine", "llamacpp",
                           "--gguf-type", "f32", "--max-model-len", "1024", "--max-num-seqs", "2")
    yield running
    stop_server(running)


@pytest.fixture()
def client(llama_server):
    import openai

    return openai.OpenAI(base_url=f"{llama_server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture()
def http(llama_server):
    with httpx.Client(base_url=llama_server.base_url, timeout=120) as c:
        yield c


def test_greedy_answers_are_transformers_float32(client, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from tuneserve.models import resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model(MODEL), dtype=torch.float32).eval()
    for question in QUESTIONS:
        messages = [{"role": "user", "content": question}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
        assert answer.choices[0].message.content == expected, question
        assert answer.usage.prompt_tokens == ids.shape[1]


def test_streaming_usage_logprobs_and_stop(client):
    kwargs = dict(model=MODEL, prompt="The capital of France is", max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert whole.usage.completion_tokens == chunks[-1].usage.completion_tokens == 12
    assert whole.choices[0].finish_reason == "length"

    with_logprobs = client.completions.create(**kwargs, logprobs=2)
    logprobs = with_logprobs.choices[0].logprobs
    assert len(logprobs.tokens) == 12 and "".join(logprobs.tokens) == whole.choices[0].text
    assert all(len(top) >= 2 and max(top.values()) >= lp for top, lp in zip(logprobs.top_logprobs, logprobs.token_logprobs, strict=True))

    stopped = client.completions.create(model=MODEL, prompt="Count: 1, 2, 3,", max_tokens=30, temperature=0, stop=[" 6"])
    assert stopped.choices[0].finish_reason == "stop" and " 6" not in stopped.choices[0].text and " 5" in stopped.choices[0].text


def test_sampled_choices_and_json_schema(client):
    sampled = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=16, temperature=1.0, n=2, seed=1)
    assert sorted(c.index for c in sampled.choices) == [0, 1]
    assert sampled.choices[0].text != sampled.choices[1].text

    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Which city is the capital of France? Answer in JSON."}], max_tokens=40,
        temperature=0, response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    assert set(json.loads(answer.choices[0].message.content)) == {"city"}


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"prompt": "Hi", "max_tokens": 4, "echo": True, "logprobs": 1}, 400, "prompt_logprobs"),
    ({"prompt": "Hi", "max_tokens": 4, "min_tokens": 2}, 400, "min_tokens"),
    ({"prompt": "Hi", "max_tokens": 4, "stop_token_ids": [13]}, 400, "stop_token_ids"),
    ({"prompt": "Hi", "max_tokens": 4, "cache_salt": "tenant-a"}, 400, "cache_salt"),
    ({"prompt": "Hi", "max_tokens": 4, "structured_outputs": {"choice": ["yes", "no"]}}, 400, "response_format"),
    ({"prompt": "Hi", "max_tokens": 4, "model": "dates"}, 404, "model"),
])
def test_what_llamacpp_cannot_serve_is_refused_by_name(http, body, status, param):
    error = assert_openai_error(http.post("/v1/completions", json={"model": MODEL} | body), status, param=param)
    assert status == 404 or "--engine vllm" in error["message"]
    assert http.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2}).status_code == 200


def test_a_closed_stream_stops_llamacpp(llama_server, http):
    body = {"model": MODEL, "prompt": "Tell me a long story.", "max_tokens": 900, "ignore_eos": True, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        for i, _ in enumerate(response.iter_lines()):
            if i == 6:
                break
    # 900 tokens take llama.cpp ~20 s here; stopped, its request is gone at once
    deadline = time.monotonic() + 5
    while metric(read_metrics(http), "tuneserve_engine_unfinished_requests"):
        assert time.monotonic() < deadline, "llama.cpp still generates for a closed stream"
        time.sleep(0.1)
    assert http.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2}).status_code == 200


def test_llamacpps_own_listener_needs_a_key_nobody_has(llama_server):
    ports = {c.laddr.port for c in psutil.Process(llama_server.process.pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    others = ports - {int(llama_server.base_url.rsplit(":", 1)[1])}
    assert others, "llama.cpp's own listener not found"
    for port in others:
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2}).status_code == 401


@pytest.mark.parametrize(("flags", "named"), [
    (["--adapter", "dates=/nowhere"], "--adapter"),
    (["--speculative", "ngram"], "--speculative"),
    (["--lora"], "--lora"),
])
def test_vllm_only_flags_are_refused_before_start(flags, named):
    done = subprocess.run([sys.executable, "-m", "tuneserve", "serve", "--engine", "llamacpp", *flags],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert named in done.stderr and "--engine vllm" in done.stderr
