"""--adapters-file: the server follows a declared set of adapters as the file changes.

The reconcile logic is checked on a fake engine (fast, every branch); the behaviour users see is
checked on the session server, which runs with an adapters file that these tests edit.
"""

import asyncio
import re
import shutil
import threading
import time

import httpx
import openai
import pytest

from tests.helpers import ADAPTERS, MODEL
from tests.server.fake_engine import FakeEngine
from tests.server.test_adapters import DATE_PROMPT, greedy
from tuneserve.models import resolve_model
from tuneserve.server.adapters import AdapterRegistry
from tuneserve.server.adapters_file import AdaptersFileError, AdaptersFileWatcher, read_adapters_file
from tuneserve.server.main import served_base
from tuneserve.server.startup import StartupError, check_adapters_file


@pytest.fixture(scope="module")
def base():
    return served_base([MODEL], resolve_model(MODEL))


def corrupt_copy(src, dst):
    shutil.copytree(src, dst, dirs_exist_ok=True)
    weights = dst / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])  # truncated
    return dst


def test_reconcile_loads_swaps_and_unloads_as_the_file_changes(base, tmp_path):
    path = tmp_path / "adapters.yaml"

    async def scenario():
        engine = FakeEngine()
        registry = AdapterRegistry(engine, base, max_rank=16)
        watcher = AdaptersFileWatcher(path, registry)
        path.write_text(f"adapters:\n  a: {ADAPTERS['dates']}\n  b: {ADAPTERS['units']}\n")
        await watcher.check()
        a1, b1 = registry.get("a"), registry.get("b")
        assert (a1.source, str(a1.info.source_path)) == ("file", str(ADAPTERS["dates"]))

        await watcher.check()  # nothing changed: nothing reloads
        assert registry.get("a") is a1

        path.write_text(f"adapters:\n  a: {{path: {ADAPTERS['units']}}}\n  b: {{path: {ADAPTERS['units']}, version: 2}}\n")
        await watcher.check()
        assert str(registry.get("a").info.source_path) == str(ADAPTERS["units"])  # path changed: swapped
        assert registry.get("b").version == 2  # only the version label changed: reloaded from the same path
        assert engine.loras == {registry.get("a").lora_id, registry.get("b").lora_id}  # v1s evicted
        assert a1.is_retired and b1.is_retired

        path.write_text(f"adapters:\n  b: {{path: {ADAPTERS['units']}, version: 2}}\n")
        await watcher.check()
        assert set(registry.current) == {"b"} and engine.loras == {registry.get("b").lora_id}
        assert watcher.status()["declared"] == ["b"] and watcher.status()["errors"] == {}

    asyncio.run(scenario())


def test_broken_entry_is_reported_and_everything_else_serves(base, tmp_path):
    path, broken = tmp_path / "adapters.yaml", corrupt_copy(ADAPTERS["dates"], tmp_path / "broken")

    async def scenario():
        registry = AdapterRegistry(FakeEngine(), base, max_rank=16)
        watcher = AdaptersFileWatcher(path, registry)
        path.write_text(f"adapters:\n  good: {ADAPTERS['units']}\n  bad: {broken}\n  keep: {ADAPTERS['dates']}\n")
        await watcher.check()
        assert set(registry.current) == {"good", "keep"}
        assert set(watcher.status()["errors"]) == {"bad"} and "truncated" in watcher.errors["bad"]
        keep = registry.get("keep")

        path.write_text(f"adapters:\n  good: {ADAPTERS['units']}\n  keep: {broken}\n")  # bad removed, keep broken
        await watcher.check()
        assert registry.get("keep") is keep  # the previous version serves on
        assert set(watcher.errors) == {"keep"} and "bad" not in registry.current

        shutil.rmtree(broken)  # the operator fixes the files in place: the retry picks it up
        shutil.copytree(ADAPTERS["units"], broken)
        watcher._retry_at = 0
        await watcher.check()
        assert watcher.errors == {} and registry.get("keep").version == 2

    asyncio.run(scenario())


def test_a_file_that_does_not_parse_changes_nothing(base, tmp_path):
    path = tmp_path / "adapters.yaml"

    async def scenario():
        registry = AdapterRegistry(FakeEngine(), base, max_rank=16)
        watcher = AdaptersFileWatcher(path, registry)
        path.write_text(f"adapters:\n  a: {ADAPTERS['dates']}\n")
        await watcher.check()
        for bad in ("adapters: [unclosed\n", "adapters:\n  a: {pth: x}\n", "", "# half-written\n", None):
            path.write_text(bad) if bad is not None else path.unlink()
            await watcher.check()
            assert set(registry.current) == {"a"}, bad
            assert watcher.status()["file_error"], bad
        path.write_text(f"adapters:\n  a: {ADAPTERS['dates']}\n")
        await watcher.check()
        assert watcher.status()["file_error"] is None and registry.get("a").version == 1

    asyncio.run(scenario())


def test_an_adapter_loaded_through_the_admin_api_is_not_the_files_to_remove(base, tmp_path):
    path = tmp_path / "adapters.yaml"

    async def scenario():
        registry = AdapterRegistry(FakeEngine(), base, max_rank=16)
        watcher = AdaptersFileWatcher(path, registry)
        path.write_text(f"adapters:\n  a: {ADAPTERS['dates']}\n")
        await watcher.check()
        await registry.load("a", ADAPTERS["units"])  # an operator's manual override
        path.write_text("adapters: {}\n")
        await watcher.check()
        assert registry.get("a").source == "api"

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "content, message",
    [
        ("adapters: [a, b]\n", "adapters: Input should be a valid dictionary"),
        ("adapters:\n  a: {path: x, versoin: 2}\n", "adapters.a.versoin: unknown setting"),
        ("adapters: {a: {path: x}}\nextra: 1\n", "extra: unknown setting"),
        ("adapters:\n  a: [\n", "not valid YAML at line"),
        ("", "the file is empty; declare no adapters with `adapters: {}`"),
        ("{}\n", "adapters: Field required"),
    ],
)
def test_a_bad_file_stops_startup_naming_the_field(tmp_path, content, message):
    path = tmp_path / "adapters.yaml"
    path.write_text(content)
    with pytest.raises(StartupError, match=re.escape(message)):
        check_adapters_file(str(path))


def test_relative_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "adapters.yaml"
    path.write_text("adapters:\n  a: ../adapters/a\n  b: {path: /abs/b, version: 3}\n")
    _, entries = read_adapters_file(path)
    assert entries["a"].path == str(tmp_path / "adapters" / "a")
    assert (entries["b"].path, entries["b"].version) == ("/abs/b", "3")
    with pytest.raises(AdaptersFileError, match="No such file"):
        read_adapters_file(tmp_path / "missing.yaml")


# --- the real server --------------------------------------------------------------------------


def declare(http: httpx.Client, adapters_file, content: str, timeout_s: float = 30) -> dict:
    """Write the file and wait until the server has reconciled this content."""
    import hashlib

    adapters_file.write_text(content)
    digest = hashlib.sha256(content.encode()).hexdigest()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listing = http.get("/v1/adapters").json()
        if listing["adapters_file"]["sha256"] == digest:
            return listing
        time.sleep(0.2)
    raise AssertionError(f"the server did not reconcile within {timeout_s}s: {listing['adapters_file']}")


def served(listing: dict) -> dict[str, dict]:
    return {a["name"]: a for a in listing["data"] if a["source"] == "file"}



@pytest.mark.engine
def test_the_server_follows_the_file_add_swap_break_remove(server, http, openai_client, adapters_file, tmp_path):
    dates, units = ADAPTERS["dates"], ADAPTERS["units"]
    broken = corrupt_copy(dates, tmp_path / "broken")
    expected = {name: greedy(openai_client, name, DATE_PROMPT) for name in ("dates", "units")}
    try:
        listing = declare(http, adapters_file, f"adapters:\n  decl: {dates}\n")
        assert "decl" in served(listing), listing
        assert served(listing)["decl"]["version"] == 1
        assert greedy(openai_client, "decl", DATE_PROMPT) == expected["dates"]
        assert "decl" in {m.id for m in openai_client.models.list().data}

        listing = declare(http, adapters_file, f"adapters:\n  decl: {units}\n  decl-bad: {broken}\n")
        assert served(listing)["decl"]["version"] == 2  # hot-swapped
        assert greedy(openai_client, "decl", DATE_PROMPT) == expected["units"]
        assert set(listing["adapters_file"]["errors"]) == {"decl-bad"}
        assert "truncated" in listing["adapters_file"]["errors"]["decl-bad"]
        assert 'tuneserve_adapters_file_errors{adapter="decl-bad"} 1.0' in http.get("/metrics").text
        assert "entry 'decl-bad' not loaded" in server.log_path.read_text()
        with pytest.raises(openai.NotFoundError):
            greedy(openai_client, "decl-bad", DATE_PROMPT)

        listing = declare(http, adapters_file, "adapters: {}\n")
        assert served(listing) == {} and listing["adapters_file"]["errors"] == {}
        assert "decl-bad" not in http.get("/metrics").text
        with pytest.raises(openai.NotFoundError):
            greedy(openai_client, "decl", DATE_PROMPT)
        assert {a["name"] for a in listing["data"] if a["source"] == "cli"} == {"dates", "units"}  # --adapter ones untouched
    finally:
        declare(http, adapters_file, "adapters: {}\n")


@pytest.mark.engine
def test_editing_the_file_while_requests_stream_fails_none(server, http, adapters_file):
    dates, units = ADAPTERS["dates"], ADAPTERS["units"]
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=http.headers["authorization"].split()[1],
                           max_retries=0, timeout=300)
    results, errors, stop = [], [], threading.Event()

    def stream(model):
        while not stop.is_set():
            try:
                chunks = client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "Count from one to twenty."}],
                    max_tokens=48, temperature=0, stream=True,
                )
                finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
                results.append((model, finish))
            except Exception as e:  # any failure at all fails the test
                errors.append((model, e))

    try:
        declare(http, adapters_file, f"adapters:\n  live: {dates}\n  kept: {units}\n")
        workers = [threading.Thread(target=stream, args=(m,)) for m in ("live", "kept", MODEL)]
        for w in workers:
            w.start()
        for content in (  # swap live twice (path, then version), add and remove another, while streaming
            f"adapters:\n  live: {units}\n  kept: {units}\n  extra: {dates}\n",
            f"adapters:\n  live: {{path: {units}, version: b}}\n  kept: {units}\n",
            f"adapters:\n  live: {dates}\n  kept: {units}\n",
        ):
            time.sleep(2)
            listing = declare(http, adapters_file, content)
            assert listing["adapters_file"]["errors"] == {}
        time.sleep(2)
    finally:
        stop.set()
        for w in workers:
            w.join()
        declare(http, adapters_file, "adapters: {}\n")
    assert not errors, errors[:3]
    assert {model for model, _ in results} == {"live", "kept", MODEL}
    assert all(finish in (["stop"], ["length"]) for _, finish in results)
    assert served(http.get("/v1/adapters").json()) == {}


def test_a_change_applies_only_once_the_file_reads_the_same_twice(base, tmp_path, monkeypatch):
    """A file being written (a slow copy, an editor's save) reads differently from one moment to
    the next: nothing is applied until two reads, SETTLE_S apart, agree."""
    from tuneserve.server import adapters_file

    path = tmp_path / "adapters.yaml"
    path.write_text(f"adapters:\n  a: {ADAPTERS['dates']}\n")
    read = adapters_file.read_adapters_file
    writes: list[str] = []  # what the file becomes just after each read, as if someone were still writing it

    def read_then_write(p):
        result = read(p)
        if writes:
            p.write_text(writes.pop(0))
        return result

    monkeypatch.setattr(adapters_file, "read_adapters_file", read_then_write)

    async def scenario():
        registry = AdapterRegistry(FakeEngine(), base, max_rank=16)
        watcher = AdaptersFileWatcher(path, registry)
        await watcher.check()  # the first read is applied: there is nothing older to keep
        writes.append(f"adapters:\n  a: {ADAPTERS['dates']}\n  b: {ADAPTERS['units']}\n")
        path.write_text(f"adapters:\n  a: {ADAPTERS['dates']}\n  b: {ADAPTERS['units']}\n  c: {ADAPTERS['units']}\n")
        await watcher.check()  # read 3 entries, then the file changed to 2: not applied
        assert set(registry.current) == {"a"}
        await watcher.check()  # the 2 entries read twice alike: applied
        assert set(registry.current) == {"a", "b"}

    asyncio.run(scenario())
