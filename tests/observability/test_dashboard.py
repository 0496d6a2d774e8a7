"""The monitor's live dashboard in headless Chromium: figures and charts appear, and move when load arrives."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from playwright.async_api import Page, async_playwright

from tests.observability.conftest import JAEGER_UI, Observed
from tests.support.client import ChatClient, make_token
from tests.support.wait import eventually

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


async def figure(page: Page, name: str) -> str:
    return (await page.locator(f'[data-figure="{name}"]').inner_text()).strip()


async def wait_for(page: Page, script: str, *, timeout: float = 20) -> Any:
    """Evaluate ``script`` in the page until it returns something truthy."""
    return await eventually(lambda: page.evaluate(script), timeout=timeout, interval=0.25, what=script)


async def test_dashboard_shows_live_figures_that_change_under_load(observed: Observed, tmp_path: Path) -> None:
    url = observed.monitor.extra["http_url"] + "/dashboard"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1500})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            # the dashboard works under its own Content-Security-Policy: the browser reports no violation
            page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            response = await page.goto(url)
            assert response is not None
            policy = response.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in policy, policy
            assert "unsafe-inline" not in policy, policy
            assert response.headers["x-content-type-options"] == "nosniff"

            # the figures and the charts appear (uPlot draws one canvas per chart)
            await wait_for(page, "document.querySelector('[data-figure=instances]').textContent.trim() === '1 / 1'")
            assert await page.locator("canvas").count() == 6
            assert await page.locator("#status").text_content() in ("healthy", "warning", "critical")
            before_connections = int(await figure(page, "connections"))
            before_messages = float(await figure(page, "messagesPerMinute"))
            points_before = await wait_for(page, "series.t.length")

            # load arrives: three connections, six answers and one failure
            clients = [await ChatClient.connect(observed.gateway.extra["ws_url"]) for _ in range(3)]
            try:
                for n, client in enumerate(clients):
                    assert (await client.join(make_token(f"dashboard-user-{n}"), "messages"))["type"] == "chat_joined"
                for round_ in range(2):
                    answers = await asyncio.gather(*(c.ask(f"load {round_} [[tokens:30]]") for c in clients))
                    assert all(a.end is not None for a in answers)
                failed = await clients[0].ask("[[fail:500]] please fail")
                assert failed.error is not None

                expected = before_connections + 3
                connections = "document.querySelector('[data-figure=connections]').textContent"
                await wait_for(page, f"{connections} === '{expected}'")
                await wait_for(
                    page,
                    f"parseFloat(document.querySelector('[data-figure=messagesPerMinute]').textContent) >= "
                    f"{before_messages + 7}",
                )
                # the charts got new points, and the latest connections point shows the load
                await wait_for(page, f"series.t.length > {points_before} && series.connections.at(-1) === {expected}")
                await wait_for(page, "series.p95.some((v) => v > 0)")
                # the slowest and failed requests are listed, linked to Jaeger
                await wait_for(page, "document.querySelectorAll('#slowest a').length > 0")
                await wait_for(page, "document.querySelectorAll('#failed a').length > 0")
                link = await page.locator("#failed a").first.get_attribute("href")
                assert link is not None
                assert link.startswith(JAEGER_UI + "/trace/")
                assert "UPSTREAM_ERROR" in await page.locator("#failed").inner_text()
                await wait_for(page, "document.querySelector('#gateways').rows.length === 1")
                # the charts draw a few more seconds of history before the screenshot
                drawn = await page.evaluate("series.t.length")
                await wait_for(page, f"series.t.length >= {drawn + 2}")
                screenshot = Path(os.environ.get("DASHBOARD_SCREENSHOT", tmp_path / "dashboard.png"))
                await page.screenshot(path=str(screenshot), full_page=True)
                assert screenshot.stat().st_size > 10_000
            finally:
                for client in clients:
                    await client.close()
            assert errors == []
            monitor_origin = observed.monitor.extra["http_url"]
            assert all(r.startswith(monitor_origin) for r in requests), "no CDN: every file comes from the monitor"
        finally:
            await browser.close()
