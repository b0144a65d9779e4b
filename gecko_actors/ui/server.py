"""The run viewer's web app (aiohttp, which ``ray[default]`` brings; no Ray needed to run it).

Endpoints (JSON unless said otherwise; an error is ``{"error": {"message", "hint"}}`` with
400 for bad input, 401 without the token, 404 for an unknown run, 409 for an action the
viewer cannot run):

- ``GET /``: the page (``static/index.html``, ``app.js``, ``style.css``: no build step);
- ``GET /api/info``: the store, whether actions run here, the dashboard link;
- ``GET /api/runs?status=&name=&offset=&limit=``: the runs, newest first;
- ``GET /api/runs/{run_id}``: a run's page: its figures, graph (SVG), steps, waiting
  branches, lineage, commands and links;
- ``GET /api/runs/{run_id}/steps/{seq}``: one step's full record;
- ``POST /api/runs/{run_id}/{respond|cancel|resume|fork}``: an action (JSON body).

Security: on a loopback address the server answers only requests for its own host name (a
page of another site cannot reach it through DNS rebinding); on any other address every
request needs the token (a header, or ``?token=`` once, which sets a cookie). An action must
be a JSON POST from the page's own origin (a form of another site cannot send one).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from gecko_actors._redact import redact
from gecko_actors._version import __version__
from gecko_actors.exceptions import GeckoError, UserError
from gecko_actors.ui.actions import Actions
from gecko_actors.ui.data import RunsReader

__all__ = ["STATIC", "is_loopback", "make_app", "serve"]

#: The page's files, shipped in the package.
STATIC = Path(__file__).parent / "static"
_READER = web.AppKey("reader", RunsReader)
_ACTIONS = web.AppKey("actions", Actions)
_TOKEN = web.AppKey("token", str)
_HOSTS = web.AppKey("hosts", set)  # the Host headers a loopback server answers
_COOKIE = web.AppKey("cookie", str)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def make_app(
    reader: RunsReader, *, actions: Actions | None = None, token: str | None = None
) -> web.Application:
    """The viewer's app over ``reader``'s store; with ``token``, every request needs it."""
    app = web.Application(middlewares=[_guard, _errors])
    app[_READER] = reader
    app[_ACTIONS] = actions or Actions(reader.store)
    app[_TOKEN] = token or ""
    app[_HOSTS] = set()  # filled in by serve() once the port is known
    app[_COOKIE] = "gecko_ui"
    app.router.add_get("/", _page)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/api/info", _info)
    app.router.add_get("/api/runs", _runs)
    app.router.add_get("/api/runs/{run_id}", _run)
    app.router.add_get("/api/runs/{run_id}/steps/{seq}", _step)
    app.router.add_post("/api/runs/{run_id}/{action}", _act)
    return app


def serve(
    app: web.Application,
    host: str,
    port: int,
    echo: Callable[[str], None],
    *,
    token: str | None = None,
    show_token: bool = True,
) -> None:
    """Serve ``app`` on ``host``:``port`` (0: a free port) until Ctrl-C, printing its URL
    first (with ``?token=`` when ``show_token``: a token the user did not choose). A host
    other than loopback is refused without ``token``."""
    if not is_loopback(host) and not token:
        raise UserError(
            f"serving on {host} needs a token: anyone who can reach it could read every run",
            hint="pass --token or set GECKO_UI_TOKEN (or serve on 127.0.0.1)",
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)  # before the URL is printed: a client that reads it may connect at once
    port = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    if is_loopback(host):
        app[_HOSTS] = {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]", shown)}
    app[_COOKIE] = f"gecko_ui_{port}"  # cookies ignore ports: one per viewer
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token and show_token else "")
    echo(f"gecko-actors ui: {url}  (Ctrl-C stops it)")
    web.run_app(app, sock=sock, print=None, access_log=None, handle_signals=True)


# --- middlewares ---------------------------------------------------------------------------


def _error(status: int, message: str, hint: str | None = None) -> web.Response:
    body = {"error": {"message": redact(message), "hint": redact(hint) if hint else None}}
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


@web.middleware
async def _guard(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """The host check, the token, and the headers every answer carries."""
    app = request.app
    hosts = app[_HOSTS]
    if hosts and request.host not in hosts:
        return _error(403, f"this viewer does not answer for host {request.host!r:.80}")
    token = app[_TOKEN]
    if token:
        given = request.query.get("token")
        if given is not None and _same(given, token) and request.method == "GET":
            # Once: then a cookie, and the token leaves the address bar and the history.
            query = {k: v for k, v in request.query.items() if k != "token"}
            target = request.rel_url.with_query(query)
            moved = web.HTTPSeeOther(str(target))
            moved.set_cookie(app[_COOKIE], token, httponly=True, samesite="Strict", path="/")
            raise moved
        header = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        header = header or request.headers.get("X-Gecko-Token", "")
        cookie = request.cookies.get(app[_COOKIE], "")
        if not (_same(header, token) or _same(cookie, token)):
            return _error(
                401,
                "this viewer needs its token",
                "open the URL `gecko-actors ui` printed (with ?token=...), or send the "
                "token in an Authorization: Bearer header",
            )
    response = await handler(request)
    response.headers.setdefault("Content-Security-Policy", _CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def _same(given: str, token: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


@web.middleware
async def _errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Every failure as JSON with a message that says what to do."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if not request.path.startswith("/api/") or exc.status < 400:
            raise
        return _error(exc.status, exc.reason)
    except UserError as exc:
        return _error(400, exc.message, exc.hint)
    except GeckoError as exc:
        return _error(500, exc.message, exc.hint)
    except Exception as exc:  # not ours (the store's SDK, Ray's): still one JSON line
        return _error(500, f"{type(exc).__name__}: {exc}")


# --- handlers ------------------------------------------------------------------------------


async def _page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


async def _info(request: web.Request) -> web.Response:
    actions = request.app[_ACTIONS]
    return web.json_response(
        {
            "version": __version__,
            "store": redact(request.app[_READER].store.uri),
            "actions": actions.connected,
            "address": redact(actions.address) if actions.address else None,
            "links": actions.links(None),
        }
    )


async def _runs(request: web.Request) -> web.Response:
    query = request.query
    found = await asyncio.to_thread(
        request.app[_READER].runs,
        status=query.get("status") or None,
        name=query.get("name") or None,
        offset=_number(query.get("offset", "0"), "offset"),
        limit=_number(query.get("limit", "200"), "limit"),
    )
    return web.json_response(found)


async def _run(request: web.Request) -> web.Response:
    run_id = request.match_info["run_id"]
    reader, actions = request.app[_READER], request.app[_ACTIONS]
    found = await asyncio.to_thread(reader.run, run_id)
    if found is None:
        return _no_run(run_id, reader)
    run = found["run"]
    extra = {
        "commands": actions.commands(run, list(found["waiting"])),
        "actions": actions.connected,
        "target": actions.target_of(run["workflow"]),
        "links": await asyncio.to_thread(actions.links, run.get("host")),
    }
    return web.json_response({**found, **extra})


async def _step(request: web.Request) -> web.Response:
    run_id, reader = request.match_info["run_id"], request.app[_READER]
    seq = _number(request.match_info["seq"], "step")
    found = await asyncio.to_thread(reader.step, run_id, seq)
    if found is None:
        return _error(404, f"run {run_id!r:.80} has no committed step {seq}")
    return web.json_response(found)


async def _act(request: web.Request) -> web.Response:
    run_id, action = request.match_info["run_id"], request.match_info["action"]
    reader, actions = request.app[_READER], request.app[_ACTIONS]
    if action not in ("respond", "cancel", "resume", "fork"):
        return _error(404, f"unknown action {action!r:.40}", "respond, cancel, resume or fork")
    origin = request.headers.get("Origin")
    if request.content_type != "application/json" or (
        origin is not None and origin.split("://", 1)[-1] != request.host
    ):
        return _error(403, "actions are JSON posts from the viewer's own page")
    try:
        body = await request.json()
    except json.JSONDecodeError:
        return _error(400, "the request's body is not JSON")
    if not isinstance(body, dict):
        return _error(400, "the request's body must be a JSON object")
    found = await asyncio.to_thread(reader.run, run_id)
    if found is None:
        return _no_run(run_id, reader)
    if not actions.connected:
        return _error(
            409,
            "the viewer is not connected to Ray: run the command shown",
            "start `gecko-actors ui` with --address to act from the page",
        )
    workflow = found["run"]["workflow"]
    if action == "respond":
        node, by = body.get("node"), body.get("by")
        call = lambda: actions.respond(  # noqa: E731
            run_id, node, body.get("value"), as_json=bool(body.get("json")), by=by
        )
    elif action == "cancel":
        call = lambda: actions.cancel(run_id)  # noqa: E731
    elif action == "resume":
        call = lambda: actions.resume(run_id, workflow)  # noqa: E731
    else:
        call = lambda: actions.fork(run_id, workflow, body.get("at_step"))  # noqa: E731
    done = await asyncio.to_thread(call)
    return web.json_response(done if isinstance(done, dict) else {"message": done})


def _no_run(run_id: str, reader: RunsReader) -> web.Response:
    return _error(
        404,
        f"no run {run_id!r:.80} in {reader.store.uri}",
        "check the run id and the viewer's --checkpoint",
    )


def _number(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 9):
        raise UserError(f"invalid {what} {text!r:.40}", hint="a whole number")
    return int(text)
