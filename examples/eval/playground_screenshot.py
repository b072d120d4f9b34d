"""Screenshots of a running server's playground (README figure): one battle, voted, and the leaderboard.

    python examples/eval/playground_screenshot.py http://127.0.0.1:8000 docs/eval/playground.png [API_KEY]

Drives Debian's chromium (/usr/bin/chromium) with Playwright, as tests/server/test_playground.py does.
"""

import shutil
import sys
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def main(base_url: str, out: Path, api_key: str = "") -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
        page = browser.new_page(viewport={"width": 1000, "height": 640})
        page.goto(f"{base_url}/playground")
        if api_key:
            page.fill("#api-key", api_key)
            page.dispatch_event("#api-key", "change")
        page.click("#tab-battle")
        page.fill("#battle-input", "Rewrite the date 14 July 1999 in ISO format (YYYY-MM-DD). Answer with the date only.")
        page.click("#battle-start")
        expect(page.locator("#vote-a")).to_be_enabled(timeout=120_000)
        winner = "#vote-a" if "1999-07-14" in page.inner_text("#answer-a") else "#vote-b"
        page.click(winner)
        expect(page.locator("#reveal")).to_contain_text("Model A was", timeout=30_000)
        page.screenshot(path=str(out.with_name(out.stem + "-battle.png")), full_page=True)
        page.click("#tab-leaderboard")
        expect(page.locator("#leaderboard-table tbody tr").first).to_be_visible(timeout=60_000)
        page.screenshot(path=str(out), full_page=True)
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "")
