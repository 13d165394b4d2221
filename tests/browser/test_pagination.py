"""The pagination macro (web/templates/macros/pagination.html), rendered the way a list page renders it:
which page links it shows, what they keep of the request, what it says about the count. The invoice list
uses it in the browser (tests/browser/test_layout.py)."""

from __future__ import annotations

from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask, render_template_string

TEMPLATES = Path(__file__).resolve().parents[2] / "web" / "templates"
USE = '{% from "macros/pagination.html" import pagination with context %}{{ pagination(page, "invoices") }}'


@dataclass
class Page:
    """The shape the macro reads (shared/invoices.py's InvoicePage has it)."""

    page: int
    has_next: bool
    total_rows: int | None
    total_capped: bool = False
    per_page: int = 25

    @property
    def pages(self) -> int:
        counted = -(-(self.total_rows or 0) // self.per_page)
        return max(1, counted, self.page + (1 if self.has_next else 0))


@dataclass
class Link:
    text: str
    query: dict[str, list[str]]
    path: str
    current: bool
    rel: str | None


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[Link] = []
        self.summary = ""
        self._in: str | None = None
        self._attrs: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("a", "p"):
            self._in, self._attrs = tag, dict(attrs)

    def handle_data(self, data: str) -> None:
        if self._in == "p":
            self.summary += data
        elif self._in == "a":
            href = urlsplit(self._attrs["href"] or "")
            self.links.append(
                Link(
                    data.strip(),
                    parse_qs(href.query),
                    href.path,
                    self._attrs.get("aria-current") == "page",
                    self._attrs.get("rel"),
                )
            )

    def handle_endtag(self, tag: str) -> None:
        self._in = None


def render(page: Page, url: str) -> _Links:
    app = Flask(__name__, template_folder=str(TEMPLATES))
    app.add_url_rule("/lists/<kind>", "listing", lambda kind: kind)
    with app.test_request_context(url):
        html = render_template_string(USE, page=page)
    parsed = _Links()
    parsed.feed(html)
    parsed.summary = " ".join(parsed.summary.split())
    return parsed


def test_a_middle_page_links_its_neighbours_the_ends_and_keeps_the_filters() -> None:
    shown = render(Page(5, True, 250), "/lists/invoices?q=Ada&status=open&tag=a&tag=b&page=5")
    assert shown.summary == "Page 5 of 10 · 250 invoices"
    assert [link.text for link in shown.links] == [
        "Previous page", "1", "3", "4", "5", "6", "7", "10", "Next page"
    ]  # fmt: skip
    by_text = {link.text: link for link in shown.links}
    assert by_text["Previous page"].rel == "prev" and by_text["Previous page"].query["page"] == ["4"]
    assert by_text["Next page"].rel == "next" and by_text["Next page"].query["page"] == ["6"]
    assert [link.text for link in shown.links if link.current] == ["5"]
    for link in shown.links:
        # The same list (its URL's own parts too), the same filters, repeated parameters kept.
        assert link.path == "/lists/invoices"
        assert link.query["q"] == ["Ada"] and link.query["status"] == ["open"]
        assert link.query["tag"] == ["a", "b"]
        assert link.query["page"] == [{"Previous page": "4", "Next page": "6"}.get(link.text, link.text)]


def test_the_first_and_last_pages_have_no_link_beyond_them() -> None:
    first = render(Page(1, True, 60), "/lists/invoices")
    assert first.summary == "Page 1 of 3 · 60 invoices"
    assert [link.text for link in first.links] == ["1", "2", "3", "Next page"]
    last = render(Page(3, False, 60), "/lists/invoices?page=3")
    assert [link.text for link in last.links] == ["Previous page", "1", "2", "3"]


@pytest.mark.parametrize(
    ("page", "summary", "links"),
    [
        # Everything on one page: the count, no links.
        (Page(1, False, 4), "4 invoices", []),
        (Page(1, False, 0), "0 invoices", []),
        # Counted up to a cap: no last page to offer, only the ones known.
        (Page(2, True, 10_000, total_capped=True), "Page 2 · more than 10000 invoices",
         ["Previous page", "1", "2", "3", "Next page"]),
        # Counting gave up (too slow): the page number and the way on.
        (Page(4, True, None), "Page 4", ["Previous page", "1", "2", "3", "4", "5", "Next page"]),
    ],
)  # fmt: skip
def test_what_is_known_of_the_count_is_said_and_nothing_more(
    page: Page, summary: str, links: list[str]
) -> None:
    shown = render(page, f"/lists/invoices?page={page.page}")
    assert shown.summary == summary
    assert [link.text for link in shown.links] == links
