"""The playground in a real browser: Debian's headless Chromium driven by Playwright, against the
session server (real engine, real model). Chat, a battle, a vote and the leaderboard."""

import os
from pathlib import Path

import pytest

from tests.helpers import ADMIN_KEY, require_tool

# Without the background-networking flags Chromium keeps dialling Google's hosts, which this network refuses.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture()
def page(server):
    from playwright.sync_api import sync_playwright

    chromium = require_tool("chromium", "chromium-browser", install="apt-get install chromium; .ci/run does")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        yield page
        browser.close()


def test_chat_battle_vote_and_leaderboard_in_a_browser(server, page):
    from playwright.sync_api import expect

    page.goto(f"{server.base_url}/playground")
    page.fill("#api-key", ADMIN_KEY)
    page.dispatch_event("#api-key", "change")
    expect(page.locator("#chat-model option[value=dates]")).to_have_count(1)

    # chat with the dates adapter, streamed
    page.select_option("#chat-model", "dates")
    page.fill("#chat-temperature", "0")
    page.fill("#chat-input", "Rewrite the date 3 March 2001 in ISO format (YYYY-MM-DD). Answer with the date only.")
    page.click("#chat-send")
    answer = page.locator(".msg.assistant[data-done=true]")
    expect(answer).to_have_count(1, timeout=120_000)
    assert "2001-03-03" in answer.inner_text()

    # a battle: two anonymous answers, a vote, the names revealed
    page.click("#tab-battle")
    page.fill("#battle-input", "Rewrite the date 14 July 1999 in ISO format (YYYY-MM-DD). Answer with the date only.")
    page.click("#battle-start")
    expect(page.locator("#vote-a")).to_be_enabled(timeout=120_000)
    assert page.inner_text("#answer-a").strip() and page.inner_text("#answer-b").strip()
    page.click("#vote-a")
    expect(page.locator("#reveal")).to_contain_text("Model A was", timeout=30_000)
    assert page.inner_text("#error") == ""

    # the leaderboard lists the models that fought
    page.click("#tab-leaderboard")
    rows = page.locator("#leaderboard-table tbody tr")
    expect(rows.first).to_be_visible(timeout=60_000)
    assert rows.count() >= 2
    assert "votes" in page.inner_text("#leaderboard-votes")
    if os.environ.get("TUNESERVE_PLAYGROUND_SCREENSHOT"):  # the README's picture: a battle, then the board
        out = Path(os.environ["TUNESERVE_PLAYGROUND_SCREENSHOT"])
        page.click("#tab-battle")
        page.screenshot(path=str(out.with_name(out.stem + "-battle.png")), full_page=True)
        page.click("#tab-leaderboard")
        page.screenshot(path=str(out), full_page=True)


def test_a_wrong_key_shows_the_servers_error_on_the_page(server, page):
    page.goto(f"{server.base_url}/playground")
    page.fill("#api-key", "sk-wrong-key-0000")
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.getElementById('error').textContent.includes('invalid API key')", timeout=30_000)
