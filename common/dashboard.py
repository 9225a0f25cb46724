"""What the coordinator's and the hospital's dashboards share: a read-only Dash app that serves
its own scripts (no CDN: it works with no internet), re-renders a page when what it shows changes
on disk, and answers loopback freely but any other address only after a token login.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from html import escape
from pathlib import Path

from dash import Dash, Input, Output, State, ctx, dcc, html
from dash.exceptions import PreventUpdate
from flask import Flask, Response, redirect, request

from common.config import ConfigError
from common.flower_process import private_secret

log = logging.getLogger("ecgfl.dashboard")
COOKIE = "ecgfl-dashboard"
REFRESH_MS = 2000  # how often an open page checks whether its files changed
# Links inside tables move within the app like dcc.Link does: no reload of its scripts.
NAVIGATE = """
document.addEventListener("click", function (event) {
  var a = event.target.closest("a.nav");
  if (!a || event.ctrlKey || event.metaKey || event.shiftKey) return;
  event.preventDefault();
  window.history.pushState({}, "", a.getAttribute("href"));
  window.dispatchEvent(new CustomEvent("_dashprivate_pushstate"));
  window.scrollTo(0, 0);
});
"""
CSS = """
body { font-family: sans-serif; margin: 1.5em; max-width: 1400px; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tbody tr:hover { background: #f7f7ff; }
pre { margin: 0.3em 0; font-size: 12px; }
"""

Render = Callable[[str, str], object]  # (path, query string) -> the page's components
Signature = Callable[[str, str], Hashable]  # changes whenever the page would render differently


def is_loopback(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def file_signature(path: Path) -> tuple[int, int] | None:
    """(size, mtime) of a file, or None: a page is redrawn only when what it shows changed."""
    try:
        s = os.stat(path)
    except OSError:
        return None
    return s.st_size, s.st_mtime_ns


def _login_form(message: str = "") -> Response:
    body = (
        "<!doctype html><title>ecgfl dashboard: login</title>"
        f"<style>{CSS}</style><body><h1>ecgfl dashboard</h1>"
        "<p>This address is not the machine's own: give the token from the dashboard's token "
        "file.</p>"
        f"<p style='color:#b00'>{escape(message)}</p>"
        '<form method="post" action="/login"><input type="password" name="token" '
        'autofocus size="50"> <button type="submit">log in</button></form>'
    )
    return Response(body, status=401, mimetype="text/html")


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _local_name(host: str) -> bool:
    """A Host header naming this machine: a page from another site that rebinds its DNS name to
    127.0.0.1 sends its own name, and is treated as the outsider it is."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name.strip("[]").lower() in ("localhost", "127.0.0.1", "::1")


def guard(server: Flask, token_file: Path | None) -> None:
    """Refuse every request that is neither from loopback nor carries the token's cookie.

    The peer address is the socket's: a proxy's X-Forwarded-For is not trusted.
    """

    def token() -> str | None:
        if token_file is None or not token_file.is_file():
            return None
        return token_file.read_text().strip() or None

    @server.before_request
    def check() -> Response | None:
        if is_loopback(request.remote_addr) and _local_name(request.host):
            return None
        expected = token()
        if expected is None:
            return Response(
                "refused: this dashboard has no token file, so it answers its own machine only",
                status=403,
                mimetype="text/plain",
            )
        if _same(request.cookies.get(COOKIE, ""), expected):
            return None
        if request.path == "/login" and request.method == "POST":
            if _same(request.form.get("token", "").strip(), expected):
                reply = redirect("/", code=303)
                reply.set_cookie(COOKIE, expected, httponly=True, samesite="Strict")
                return reply
            time.sleep(1)  # slows guessing
            return _login_form("wrong token")
        return _login_form()


def create_app(title: str, token_file: Path | None, render: Render, signature: Signature) -> Dash:
    """A one-page-at-a-time app: ``render`` draws the page for the URL; an open page is drawn
    again only when ``signature`` changes (a new round in metrics.jsonl, a new audit line)."""
    app = Dash(
        __name__,
        title=title,
        serve_locally=True,
        assets_folder=str(Path(__file__).parent / "dashboard_assets"),  # none: no extra files
        suppress_callback_exceptions=True,
        update_title=None,
    )
    app.index_string = app.index_string.replace(
        "{%css%}", f"{{%css%}}<style>{CSS}</style><script>{NAVIGATE}</script>"
    )
    guard(app.server, token_file)
    app.layout = html.Div(
        [
            dcc.Location(id="url"),
            dcc.Interval(id="tick", interval=REFRESH_MS),
            dcc.Store(id="shown"),
            html.Div(id="page"),
        ]
    )

    @app.callback(
        Output("page", "children"),
        Output("shown", "data"),
        Input("url", "pathname"),
        Input("url", "search"),
        Input("tick", "n_intervals"),
        State("shown", "data"),
    )
    def draw(path: str | None, search: str | None, _tick: int | None, shown: str | None):
        path, search = path or "/", search or ""
        now = repr(signature(path, search))
        if ctx.triggered_id == "tick" and now == shown:
            raise PreventUpdate
        try:
            return render(path, search), now
        except Exception as exc:  # a file in a shape no reader expected: say so, stay up
            log.exception("dashboard: %s%s could not be drawn", path, search)
            return html.Div([html.H1("This page could not be drawn"), html.Pre(repr(exc))]), now

    return app


def serve(app: Dash, host: str, port: int, token_file: Path | None) -> int:
    """Serve until interrupted. Any address but loopback needs the token file (created here)."""
    from werkzeug.serving import make_server

    if not is_loopback(host):
        if token_file is None:
            raise ConfigError(f"--host {host}: only loopback without a token file")
        private_secret(token_file)
        print(f"dashboard: other machines log in with the token in {token_file}")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per page refresh
    server = make_server(host, port, app.server, threaded=True)
    url = f"http://{host}:{server.server_port}/"
    print(f"dashboard: {url} (read-only; Ctrl-C stops it)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


@dataclass(frozen=True)
class Link:
    """A table cell that links to another page."""

    text: str
    href: str


@dataclass(frozen=True)
class Fold:
    """A table cell that folds out a longer text."""

    summary: str
    body: str


def _cell(value: object) -> str:
    if isinstance(value, Link):
        return f'<a class="nav" href="{escape(value.href)}">{escape(value.text)}</a>'
    if isinstance(value, Fold):
        summary, body = escape(value.summary), escape(value.body)
        return f"<details><summary>{summary}</summary><pre>{body}</pre></details>"
    return escape(str(value))


def table(header: list[str], rows: list[list[object]], table_id: str) -> dcc.Markdown:
    """A table as one escaped HTML block: every cell is in the page (no paging or virtual
    scrolling), and thousands of cells cost the browser one element, not thousands."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    text = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return dcc.Markdown(text, id=table_id, dangerously_allow_html=True)
