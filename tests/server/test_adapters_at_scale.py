"""Adapters at scale on the real server: loaded on first use from an adapter root, the Hugging Face
Hub's cache or an HTTP archive; merged per request; refused clearly when they cannot serve."""

import asyncio
import json
import shutil
import tarfile
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import ADAPTERS, ADMIN_KEY, INFERENCE_KEY, assert_openai_error, metric, read_metrics

pytestmark = pytest.mark.engine

DATE_PROMPT = "Rewrite the date 3 March 2001 in ISO format (YYYY-MM-DD). Answer with the date only."


def ask(client: openai.OpenAI, model: str, prompt: str = DATE_PROMPT) -> str:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=16)
    return reply.choices[0].message.content.strip()


def loaded(http: httpx.Client) -> dict:
    return {a["name"]: a for a in http.get("/v1/adapters").json()["data"]}


def test_an_adapter_named_in_a_request_is_loaded_on_first_use(openai_client, http, adapter_root):
    shutil.copytree(ADAPTERS["dates"], adapter_root / "jit-dates")
    assert "jit-dates" not in loaded(http)
    assert ask(openai_client, "jit-dates") == "2001-03-03"  # no admin call: the root's directory of that name
    entry = loaded(http)["jit-dates"]
    assert entry["source"] == "jit" and entry["pinned"] is False
    samples = read_metrics(http)
    assert samples[("tuneserve_adapter_lookups_total", frozenset({("adapter", "jit-dates"), ("result", "miss")}))] == 1
    assert ask(openai_client, "jit-dates") == "2001-03-03"
    samples = read_metrics(http)
    assert samples[("tuneserve_adapter_lookups_total", frozenset({("adapter", "jit-dates"), ("result", "hit")}))] == 1
    assert samples[("tuneserve_adapter_resident", frozenset({("adapter", "jit-dates"), ("tier", "disk")}))] == 1
    assert "jit-dates" in {m.id for m in openai_client.models.list().data}


def test_concurrent_first_requests_wait_for_one_load(server, http, adapter_root):
    shutil.copytree(ADAPTERS["units"], adapter_root / "jit-once")
    before = metric(read_metrics(http), "tuneserve_adapter_loads_total")

    async def burst():
        client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=300)
        return await asyncio.gather(*(client.chat.completions.create(
            model="jit-once", messages=[{"role": "user", "content": "Convert 7.5 km to meters. Answer with the number only."}],
            temperature=0, max_tokens=8) for _ in range(4)))

    answers = {r.choices[0].message.content.strip() for r in asyncio.run(burst())}
    assert answers == {"7500"}
    assert metric(read_metrics(http), "tuneserve_adapter_loads_total") == before + 1


def test_a_key_may_not_load_an_adapter_it_may_not_use(server, http, adapter_root):
    shutil.copytree(ADAPTERS["dates"], adapter_root / "jit-forbidden")
    response = httpx.post(f"{server.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {INFERENCE_KEY}"},
                          json={"model": "jit-forbidden", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert_openai_error(response, 403, "model", "permission_denied")
    assert "jit-forbidden" not in loaded(http)  # nothing was loaded for it


def rank16(path):
    """The adapter padded to rank 16 with zeros: the same deltas, another rank."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "adapter_model.safetensors")
    padded = {k: torch.cat([t, torch.zeros(8, t.shape[1])]) if "lora_A" in k else torch.cat([t, torch.zeros(t.shape[0], 8)], 1)
              for k, t in tensors.items()}
    save_file(padded, path / "adapter_model.safetensors")
    config = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(json.dumps(config | {"r": 16, "lora_alpha": config["lora_alpha"] * 2}))


def other_base(path):
    manifest = json.loads((path / "tuneserve.json").read_text())
    (path / "tuneserve.json").write_text(json.dumps(manifest | {"base_model": {"name": "another-model", "sha256": "0" * 64}}))


@pytest.mark.parametrize("name,damage,status,code,words", [
    ("jit-corrupt", lambda p: (p / "adapter_model.safetensors").write_bytes(b"\x10" + b"\x00" * 20), 400, "invalid_adapter", "safetensors"),
    ("jit-wide", lambda p: (p / "adapter_config.json").write_text(json.dumps(json.loads((p / "adapter_config.json").read_text()) | {"r": 64})),
     400, "invalid_adapter", "above this server's --max-lora-rank 16"),
    ("jit-elsewhere", other_base, 400, "adapter_base_mismatch", "another-model"),
])
def test_a_bad_adapter_is_a_clear_4xx_and_nothing_stays(http, adapter_root, name, damage, status, code, words):
    path = adapter_root / name
    shutil.copytree(ADAPTERS["dates"], path)
    damage(path)
    response = http.post("/v1/chat/completions", json={"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    error = assert_openai_error(response, status, code=code)
    assert words in error["message"]
    assert name not in loaded(http)
    assert http.get("/health").status_code == 200


@pytest.mark.parametrize("where,words", [
    ("dead", "cannot download it"),
    ("missing", "HTTP 404"),
    ("hub", "not found on the Hub or in its cache"),
])
def test_an_unreachable_adapter_is_a_clear_4xx(http, adapter_site, where, words):
    ref = {"dead": adapter_site.dead_prefix + "gone.tar.gz", "missing": adapter_site.prefix + "nothing-here.tar.gz",
           "hub": "hf://no-such-org/no-such-adapter"}[where]
    response = http.post("/v1/chat/completions", json={"model": ref, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    error = assert_openai_error(response, 400, code="adapter_fetch_failed")
    assert words in error["message"] and ref.split("//")[1][:10] in error["message"]
    assert ref not in loaded(http)


def test_an_http_archive_is_fetched_checked_and_served(openai_client, http, adapter_site):
    with tarfile.open(adapter_site.directory / "dates.tar.gz", "w:gz") as archive:
        archive.add(ADAPTERS["dates"], arcname="dates-lora")
    url = adapter_site.prefix + "dates.tar.gz"
    assert ask(openai_client, url) == "2001-03-03"
    assert loaded(http)[url]["rank"] == 8


@pytest.mark.parametrize("where", ["elsewhere", "redirected"])
def test_urls_outside_the_allowed_prefixes_are_refused_before_any_fetch(http, adapter_site, where):
    """No request can make the server fetch an arbitrary URL (e.g. a cloud metadata address):
    only URLs under --adapter-url-prefix, redirects included."""
    (adapter_site.directory / "elsewhere").mkdir(exist_ok=True)
    with tarfile.open(adapter_site.directory / "elsewhere" / "units.tar.gz", "w:gz") as archive:
        archive.add(ADAPTERS["units"], arcname="units-lora")
    ref = {"elsewhere": adapter_site.prefix.removesuffix("adapters/") + "elsewhere/units.tar.gz",
           "redirected": adapter_site.prefix + "moved/units.tar.gz"}[where]
    response = http.post("/v1/chat/completions", json={"model": ref, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    error = assert_openai_error(response, 400, code="adapter_url_not_allowed")
    assert "--adapter-url-prefix" in error["message"]
    assert ref not in loaded(http)


def test_a_hub_id_is_served_from_the_hub_cache(openai_client, hub_cache):
    """The server runs with HF_HUB_OFFLINE=1: huggingface_hub resolves hf://ORG/NAME from its cache,
    laid out here as the Hub's client lays it out."""
    snapshot = hub_cache / "models--acme--dates-lora" / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", "tuneserve.json"):
        shutil.copy(ADAPTERS["dates"] / name, snapshot / name)
    (hub_cache / "models--acme--dates-lora" / "refs").mkdir()
    (hub_cache / "models--acme--dates-lora" / "refs" / "main").write_text("c" * 40)
    assert ask(openai_client, "hf://acme/dates-lora") == "2001-03-03"


def test_adapters_merged_per_request_are_built_once_and_listed_with_their_recipe(openai_client, http, adapter_root):
    answer = ask(openai_client, "merge:dates+units")
    assert answer  # served (the merge of two skills; its exactness against PEFT: test_merged_adapters_match_peft)
    entry = loaded(http)["merge:dates+units"]
    manifest = json.loads((Path(entry["snapshot"]) / "tuneserve.json").read_text())
    assert manifest["recipe"]["merge"] == {"method": "linear", "terms": [["dates", 0.5], ["units", 0.5]], "density": None, "seed": 0}
    assert ask(openai_client, "merge:dates+units") == answer  # the second request is a hit: the same adapter
    shutil.copytree(ADAPTERS["units"], adapter_root / "jit-r16")
    rank16(adapter_root / "jit-r16")
    response = http.post("/v1/chat/completions", json={"model": "merge:ties:dates+jit-r16", "messages": [{"role": "user", "content": "hi"}]})
    assert "needs adapters of one rank" in assert_openai_error(response, 400, "model")["message"]
    response = http.post("/v1/chat/completions", json={"model": "merge:dates+dates", "messages": [{"role": "user", "content": "hi"}]})
    assert_openai_error(response, 400, "model")
