"""The chart helper (web/static/charts.js with web/templates/macros/chart.html and the vendored Chart.js),
in Chromium, under the app's own Content-Security-Policy.

The page is the real app's (web.create_app(), its static files and security headers) with one extra
route rendering charts through the macro; Playwright answers the browser's requests from the app's test
client, so no server runs. What the charts show is read back from the page: the numbers table the
helper writes and the Chart.js instance behind each canvas."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, render_template_string
from playwright.sync_api import Browser, Page, Route, expect

import web
from tests.support.browser import ARTIFACTS

ORIGIN = "http://offsession.test"
HOSTILE = "</script><script>window.__injected = true</script><b>bold</b> & more"

OUTCOMES = {
    "kind": "stacked-bar",
    "label_heading": "Day",
    "labels": ["2026-11-28", "2026-11-29", "2026-11-30"],
    "series": [
        {"name": "Succeeded", "values": [4, 0, 7], "tone": "succeeded"},
        {"name": "Failed", "values": [1, 2, 0], "tone": "failed"},
        {"name": "Waiting for the client to authenticate", "values": [0, 1, 1], "tone": "requires_action"},
    ],
}
DECLINES = {
    "kind": "horizontal-bar",
    "label_heading": "Decline reason",
    "labels": ["insufficient funds", "expired card", HOSTILE],
    "series": [{"name": "Declines", "values": [12, 5, 1]}],
}
COLLECTED_EUR = {
    "kind": "line",
    "label_heading": "Day",
    "labels": ["Mon", "Tue"],
    "series": [{"name": "Collected", "values": [123_456, 99]}],
    "money": {"currency": "EUR", "exponent": 2},
}
COLLECTED_JPY = {
    "kind": "bar",
    "labels": ["Today"],
    "series": [{"name": "Collected", "values": [1_200]}],
    "money": {"currency": "JPY", "exponent": 0},
}
PAGE = """{% extends "base.html" %}
{% from "macros/chart.html" import chart, chart_scripts %}
{% block head %}{{ chart_scripts() }}{% endblock %}
{% block content %}
{{ chart("outcomes", "Charges by outcome", outcomes) }}
{{ chart("declines", "Top decline reasons", declines) }}
{{ chart("collected-eur", "Collected (EUR)", eur) }}
{{ chart("collected-jpy", "Collected (JPY)", jpy) }}
{% endblock %}"""
# Every violation of the page's CSP is recorded (the listener is installed before any page script).
RECORD_CSP_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));
"""


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    home = tmp_path_factory.mktemp("charts-home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OFFSESSION_HOME", str(home))
        env.setenv("DATABASE_URL", f"sqlite:///{home / 'unused.db'}")
        env.setenv("CELERY_BROKER_URL", "memory://")
        env.delenv("PUBLIC_BASE_URL", raising=False)
        application = web.create_app()
        application.add_url_rule(
            "/chart-fixture",
            "chart_fixture",
            lambda: render_template_string(
                PAGE, outcomes=OUTCOMES, declines=DECLINES, eur=COLLECTED_EUR, jpy=COLLECTED_JPY
            ),
        )
        yield application


@pytest.fixture
def chart_page(browser: Browser, app: Flask, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    client = app.test_client()

    def answer(route: Route) -> None:
        path = route.request.url.removeprefix(ORIGIN)
        response = client.get(path)
        route.fulfill(status=response.status_code, headers=dict(response.headers), body=response.get_data())

    context.route(f"{ORIGIN}/**", answer)
    context.add_init_script(RECORD_CSP_VIOLATIONS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_default_timeout(15_000)
    try:
        yield page
        assert errors == [], errors
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        context.close()


def numbers(page: Page, chart_id: str) -> dict[str, dict[str, int]]:
    """The chart's numbers as the page shows them: {label: {series: value}}."""
    rows: list[dict[str, Any]] = page.locator(f"#{chart_id} table.chart-numbers tbody tr").evaluate_all(
        """rows => rows.map(row => ({label: row.querySelector("th").textContent,
             cells: [...row.querySelectorAll("td")].map(td => [td.dataset.series, Number(td.dataset.value),
                                                               td.textContent])}))"""
    )
    return {row["label"]: {series: value for series, value, _ in row["cells"]} for row in rows}


def shown_texts(page: Page, chart_id: str) -> list[str]:
    return page.locator(f"#{chart_id} table.chart-numbers tbody td").all_text_contents()


def drawn(page: Page, chart_id: str) -> dict[str, Any]:
    """What Chart.js holds for the chart's canvas, and whether the canvas has pixels painted."""
    return page.evaluate(
        """id => {
          const canvas = document.querySelector(`#${id} canvas`);
          const chart = window.Chart.getChart(canvas);
          const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
          let painted = 0;
          for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
          return {labels: chart.data.labels, series: chart.data.datasets.map(d => [d.label, d.data]),
                  type: chart.config.type, indexAxis: chart.options.indexAxis, painted,
                  width: canvas.clientWidth, height: canvas.clientHeight};
        }""",
        chart_id,
    )


def open_page(page: Page) -> None:
    answer = page.goto(f"{ORIGIN}/chart-fixture")
    assert answer is not None and answer.status == 200
    csp = answer.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe" not in csp
    for chart_id in ("outcomes", "declines", "collected-eur", "collected-jpy"):
        expect(page.locator(f"#{chart_id}")).to_have_attribute("data-chart-state", "drawn")


def test_each_chart_draws_its_numbers_and_writes_them_into_the_page(chart_page: Page) -> None:
    page = chart_page
    open_page(page)
    assert numbers(page, "outcomes") == {
        "2026-11-28": {"Succeeded": 4, "Failed": 1, "Waiting for the client to authenticate": 0, "Total": 5},
        "2026-11-29": {"Succeeded": 0, "Failed": 2, "Waiting for the client to authenticate": 1, "Total": 3},
        "2026-11-30": {"Succeeded": 7, "Failed": 0, "Waiting for the client to authenticate": 1, "Total": 8},
    }
    chart = drawn(page, "outcomes")
    assert chart["type"] == "bar" and chart["labels"] == OUTCOMES["labels"]
    assert chart["series"] == [[s["name"], s["values"]] for s in OUTCOMES["series"]]
    assert chart["painted"] > 1000 and chart["width"] > 600 and chart["height"] > 200

    assert numbers(page, "declines") == {
        "insufficient funds": {"Declines": 12},
        "expired card": {"Declines": 5},
        HOSTILE: {"Declines": 1},
    }
    assert drawn(page, "declines")["indexAxis"] == "y"
    # The labels are text, never markup: nothing the server put in the data ran.
    assert page.evaluate("window.__injected") is None
    assert page.locator("#declines b").count() == 0

    # Amounts are minor units of their currency, shown as money (JPY has no decimals).
    assert shown_texts(page, "collected-eur") == ["€1,234.56", "€0.99"]
    assert numbers(page, "collected-eur") == {"Mon": {"Collected": 123_456}, "Tue": {"Collected": 99}}
    assert shown_texts(page, "collected-jpy") == ["¥1,200"]

    # The table is there for people too: behind "Show the numbers", and the canvas points to it.
    page.locator("#outcomes summary", has_text="Show the numbers").click()
    expect(page.locator("#outcomes table.chart-numbers")).to_be_visible()
    expect(page.locator("#outcomes canvas")).to_have_attribute("aria-describedby", "outcomes-numbers")
    expect(page.get_by_role("img", name="Charges by outcome")).to_be_visible()
    assert page.evaluate("window.__violations") == []


def test_without_chart_js_the_numbers_still_show(chart_page: Page) -> None:
    page = chart_page
    page.route("**/vendor/chartjs/**", lambda route: route.abort())
    page.goto(f"{ORIGIN}/chart-fixture")
    outcomes = page.locator("#outcomes")
    expect(outcomes).to_have_attribute("data-chart-state", "table-only")
    expect(outcomes.locator("table.chart-numbers")).to_be_visible()  # open: it is all there is
    expect(outcomes.locator("canvas")).to_be_hidden()
    assert numbers(page, "outcomes")["2026-11-30"] == {
        "Succeeded": 7,
        "Failed": 0,
        "Waiting for the client to authenticate": 1,
        "Total": 8,
    }


def test_charts_fit_a_phone(chart_page: Page) -> None:
    page = chart_page
    page.set_viewport_size({"width": 375, "height": 800})
    open_page(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert drawn(page, "outcomes")["width"] <= 375 - 32
    assert page.evaluate("window.__violations") == []
