"""The emulator's own pages (hosted Checkout, the bank's 3-D Secure step, Connect OAuth): plain HTML
forms that post back to the emulator, no script at all, so they work under the strictest browser
settings; their Content-Security-Policy says so."""

from __future__ import annotations

from html import escape
from urllib.parse import parse_qsl

from .wire import Response

# No script, nothing framed, forms post here (and their answers redirect wherever the flow goes).
CSP = ("default-src 'none'; style-src 'unsafe-inline'; form-action 'self' http: https:; "
       "frame-ancestors 'none'; base-uri 'none'")
_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 30em; margin: 3em auto; padding: 0 1em; color: #1a1f36 }
h1 { font-size: 1.4em } label { display: block; margin-top: .8em; font-weight: 600 }
input, select { width: 100%; box-sizing: border-box; padding: .5em; font-size: 1em }
button { margin-top: 1.2em; padding: .6em 1.2em; font-size: 1em }
.error { color: #df1b41; font-weight: 600 } .muted { color: #697386; font-size: .9em }
.row { display: flex; gap: 1em } .row > div { flex: 1 }
"""

__all__ = ["CSP", "escape", "form_fields", "page", "redirect", "with_query"]


def page(title: str, body: str, status: int = 200) -> Response:
    html = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)} (Stripe emulator)</title><style>{_STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")
    return Response(status, html.encode(), [("Content-Security-Policy", CSP), ("Cache-Control", "no-store")],
                    content_type="text/html; charset=utf-8")


def redirect(location: str, status: int = 302) -> Response:
    """302 after a GET, 303 after a form POST (the browser follows it with a GET)."""
    return Response(status, b"", [("Location", location), ("Cache-Control", "no-store")],
                    content_type="text/plain")


def form_fields(body: bytes) -> dict[str, str]:
    """A form post's fields (the last value of each name)."""
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except (UnicodeDecodeError, ValueError):
        return {}


def with_query(url: str, params: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{params}"
