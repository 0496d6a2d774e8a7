"""The browser chat page in headless Chromium against a running gateway, worker and (fake) model.

Set CHAT_PAGE_SCREENSHOT=docs/chat-page.png to refresh the screenshots in the docs (the conversation,
and beside it chat-page-rate-limited.png).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from playwright.async_api import Page, async_playwright, expect

from chat_common.settings import Settings
from chat_gateway.app import create_app
from tests.support.client import TEST_SECRET, make_token
from tests.support.processes import ROOT, ServiceProcess

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


async def test_page_is_served_and_dev_tokens_are_off_by_default(gateway: ServiceProcess) -> None:
    async with httpx.AsyncClient(base_url=gateway.extra["http_url"]) as http:
        page = await http.get("/", follow_redirects=True)
        assert page.status_code == 200
        assert "<title>Legal assistant" in page.text
        policy = page.headers["content-security-policy"]
        for directive in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'", "object-src 'none'"):
            assert directive in policy, policy
        assert "unsafe-inline" not in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        assert (await http.get("/chat/chat.js")).status_code == 200
        refused = await http.post("/api/dev/token", json={"userId": "mallory"})
        assert refused.status_code == 404


def test_production_switches() -> None:
    assert Settings().dev_tokens_enabled is False
    assert Settings().chat_page_enabled is True
    app = create_app(Settings(jwt_secret=TEST_SECRET, chat_page_enabled=False))
    http = TestClient(app)  # no lifespan: only the routing is looked at
    assert http.get("/chat/").status_code == 404
    assert http.post("/api/dev/token", json={"userId": "x"}).status_code == 404


async def _wait_answer(page: Page, index: int, state: str = "done") -> str:
    bubble = page.locator(".msg.assistant").nth(index)
    await expect(bubble).to_have_attribute("data-state", state, timeout=20_000)
    return await bubble.locator(".text").inner_text()


async def test_chat_in_the_browser(client_gateway: ServiceProcess, tmp_path: Path) -> None:
    """Against a gateway with development tokens on and 4 messages per window (tests/client/conftest.py)."""
    gateway = client_gateway
    user = f"browser-{uuid.uuid4().hex[:6]}"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # the page works under its own Content-Security-Policy: the browser reports no violation
            page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
            await page.goto(gateway.extra["http_url"] + "/")

            # sign in with a development token
            await page.fill("#user-id", user)
            await page.click("text=Get a development token")
            await expect(page.locator("#status")).to_have_attribute("data-state", "online", timeout=10_000)
            await expect(page.locator("#who")).to_have_text(user)
            await expect(page.locator("#chat-type")).to_have_text("Legal question")

            # send, and watch the answer arrive in pieces
            question = "[[slow:40]] [[tokens:40]] What must a valid contract contain?"
            await page.fill("#input", question)
            await page.keyboard.press("Enter")
            await page.wait_for_function(
                "() => { const t = document.querySelector('.msg.assistant[data-state=streaming] .text');"
                " return t && t.textContent.length > 0; }",
                timeout=15_000,
            )
            partial = await page.locator(".msg.assistant .text").first.inner_text()
            await expect(page.locator("#stop")).to_be_visible()
            answer = await _wait_answer(page, 0)
            assert len(answer) > len(partial) > 0, "the answer was seen growing, not arriving at once"
            assert answer.startswith(partial)
            assert int(await page.locator(".msg.assistant").first.get_attribute("data-chunks") or 0) > 1
            await expect(page.locator("#stop")).to_be_hidden()
            await expect(page.locator("#chats li")).to_have_count(1)
            await expect(page.locator("#chats li.active .title")).to_have_text(question)

            # a second chat, of the other type
            await page.click("#new-documents")
            await expect(page.locator("#chat-type")).to_have_text("Documents")
            await expect(page.locator(".msg")).to_have_count(0)
            await expect(page.locator("#chats li")).to_have_count(2)
            await page.fill("#input", "[[tokens:12]] Review this NDA clause: the recipient shall keep secrets.")
            await page.click("#send")
            await _wait_answer(page, 0)

            # stop an answer half-way
            await page.fill("#input", "[[slow:120]] [[tokens:200]] Draft a long lease agreement")
            await page.click("#send")
            await page.wait_for_function(
                "() => { const t = document.querySelectorAll('.msg.assistant')[1]?.querySelector('.text');"
                " return t && t.textContent.length > 0; }",
                timeout=15_000,
            )
            await page.click("#stop")
            await _wait_answer(page, 1, state="cancelled")
            await expect(page.locator(".msg.assistant").nth(1).locator(".tail")).to_have_text("stopped")

            # switch back to the first chat: its history is shown
            await page.locator("#chats li button", has_text="What must a valid contract").click()
            await expect(page.locator("#chat-type")).to_have_text("Legal question")
            await expect(page.locator(".msg.user .text")).to_have_text([question])
            await expect(page.locator(".msg.assistant .text")).to_have_text([answer])
            await expect(page.locator("#chats li.active .title")).to_have_text(question)
            screenshot = ROOT / os.environ.get("CHAT_PAGE_SCREENSHOT", tmp_path / "chat-page.png")
            await page.screenshot(path=str(screenshot))

            # the 5th message in the window is refused: the page says how long to wait
            await page.fill("#input", "[[tokens:3]] one more")
            await page.click("#send")
            await _wait_answer(page, 1)
            await page.fill("#input", "and another")
            await page.click("#send")
            notice = page.locator("#notice")
            await expect(notice).to_be_visible()
            await expect(notice).to_contain_text("You are sending messages too quickly. You can send again in")
            await expect(page.locator("#send")).to_be_disabled()
            await expect(page.locator("#input")).to_have_value("and another")
            await page.screenshot(path=str(screenshot.with_name("chat-page-rate-limited.png")))
            assert errors == []
        finally:
            await browser.close()


async def test_sign_in_with_a_pasted_token_where_dev_tokens_are_off(gateway: ServiceProcess) -> None:
    """The production shape: no development endpoint, the page says so, a pasted token works."""
    user = f"pasted-{uuid.uuid4().hex[:6]}"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(gateway.extra["http_url"] + "/chat/")
            await page.click("text=Get a development token")
            await expect(page.locator("#sign-in-error")).to_contain_text("Development tokens are turned off")
            await page.fill("#token", make_token(user))
            await page.click("text=Use this token")
            await expect(page.locator("#status")).to_have_attribute("data-state", "online", timeout=10_000)
            await expect(page.locator("#who")).to_have_text(user)
            await page.fill("#input", "[[tokens:5]] hello")
            await page.keyboard.press("Enter")
            await _wait_answer(page, 0)
            await page.click("#sign-out")
            await expect(page.locator("#sign-in")).to_be_visible()
            await expect(page.locator("#status")).to_have_attribute("data-state", "offline")
        finally:
            await browser.close()
