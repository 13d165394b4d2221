"""Stripe's search endpoints (`/v1/.../search`): the query language and the page of results."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from ..wire import Params, invalid
from .base import Ctx, list_limit, render


def search(ctx: Ctx, p: Params, values: Iterable[dict[str, Any]], fields: dict[str, str],
            url: str) -> dict[str, Any]:
    query = p.str("query", required=True) or ""
    predicate = parse_query(query, fields)
    limit = list_limit(p, default=10)
    page = p.str("page") or None
    offset = 0
    if page:
        if not page.startswith("page_") or not page[5:].isdigit():
            raise invalid(f"Invalid page: {page}", param="page")
        offset = int(page[5:])
    rows = [o for o in reversed(list(values)) if predicate(o)]
    chunk = rows[offset:offset + limit]
    more = len(rows) > offset + limit
    sub = [path[5:] for path in p.expand() if path.startswith("data.")]
    return {"object": "search_result", "data": [render(ctx, o, sub) for o in chunk],
            "has_more": more, "next_page": f"page_{offset + limit}" if more else None, "url": url}


_CLAUSE = re.compile(
    r"""\s*(?P<neg>-)?(?P<field>metadata\[(?P<q>['"])(?P<key>.*?)(?P=q)\]|[a-z_]+)\s*"""
    r"""(?P<op>:|>=|<=|>|<)\s*(?:'(?P<sq>[^']*)'|"(?P<dq>[^"]*)"|(?P<bare>[^\s'"]+))\s*"""
)
_JOIN = re.compile(r"(AND|OR)\s+")


def parse_query(query: str, fields: dict[str, str]) -> Callable[[dict[str, Any]], bool]:
    """Stripe's search syntax: clauses like metadata['k']:'v', status:'x', amount>100, joined by
    AND or OR (not both), a leading - negates a clause."""
    clauses: list[Callable[[dict[str, Any]], bool]] = []
    joins: set[str] = set()
    pos = 0
    while True:
        m = _CLAUSE.match(query, pos)
        if not m:
            raise invalid(f"Invalid search query at position {pos}: {query!r}", param="query")
        clauses.append(_clause(m, fields))
        pos = m.end()
        if pos >= len(query):
            break
        j = _JOIN.match(query, pos)
        if not j:
            raise invalid(f"Invalid search query at position {pos}: {query!r}", param="query")
        joins.add(j.group(1))
        pos = j.end()
    if len(joins) > 1:
        raise invalid("Search queries cannot mix AND and OR.", param="query")
    if joins == {"OR"}:
        return lambda o: any(c(o) for c in clauses)
    return lambda o: all(c(o) for c in clauses)


def _clause(m: re.Match[str], fields: dict[str, str]) -> Callable[[dict[str, Any]], bool]:
    value = next(v for v in (m.group("sq"), m.group("dq"), m.group("bare")) if v is not None)
    op = m.group("op")
    negate = m.group("neg") is not None
    test: Callable[[dict[str, Any]], bool]
    if m.group("key") is not None:
        if op != ":":
            raise invalid("Metadata can only be matched with ':'.", param="query")
        key = m.group("key")
        test = lambda o: o.get("metadata", {}).get(key) == value  # noqa: E731
    else:
        name = m.group("field")
        kind = fields.get(name)
        if kind is None:
            raise invalid(f"Field {name!r} is not supported in search queries. Supported: "
                          f"{', '.join(sorted(fields))}, metadata['key'].", param="query")
        if kind == "int":
            try:
                number = int(value)
            except ValueError:
                raise invalid(f"Field {name!r} needs a number, got {value!r}.", param="query") from None
            compare: dict[str, Callable[[int], bool]] = {
                ":": lambda x: x == number, ">": lambda x: x > number, ">=": lambda x: x >= number,
                "<": lambda x: x < number, "<=": lambda x: x <= number,
            }
            check = compare[op]
            test = lambda o: o.get(name) is not None and check(o[name])  # noqa: E731
        else:
            if op != ":":
                raise invalid(f"Field {name!r} can only be matched with ':'.", param="query")
            test = lambda o: o.get(name) == value  # noqa: E731
    if negate:
        return lambda o: not test(o)
    return test
