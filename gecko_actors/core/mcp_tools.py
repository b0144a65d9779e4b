"""MCP tools: the tools a Model Context Protocol server lists, as gecko_actors :class:`Tool`s
a :class:`LocalAgent` (or a :class:`ToolBox`) runs, through one session of the official
``mcp`` SDK (``pip install "gecko-actors[mcp]"``). No Ray.

    async with mcp_tools(command=["python", "server.py"], env_from=["GITHUB_TOKEN"]) as tools:
        output = await LocalAgent(model, tools).arun("open an issue about ...")

The session lives as long as the ``async with`` block, in the event loop that opened it: use
the tools from async code (``arun``, ``astream``), not through the blocking ``run``, which
starts a loop of its own. A call that the server answers with an error (``isError``), or
that fails because the server died, goes back to the model as a tool error. Secrets reach the
server by name (``env_from``): their values are read from this process's environment when
the server starts, and are never arguments of anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from gecko_actors._secrets.names import is_secret_name
from gecko_actors.core.tools import Tool
from gecko_actors.exceptions import ConfigurationError, ToolError, UserError

__all__ = ["MCPSession", "MCPTool", "check_server", "mcp_tools"]

_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")


class MCPSession:
    """What the tools of one session share: ``broken`` once a call found the connection to
    the server gone (its process died, say), as opposed to the server answering an error."""

    def __init__(self, client: Any) -> None:
        self.client, self.broken = client, False


class MCPTool(Tool):
    """One tool of an MCP server: its name (made safe for model APIs: other characters
    become ``_``), description and JSON schema as the server lists them; a call goes to the
    server through ``session``."""

    def __init__(self, session: MCPSession, listed: Any, *, timeout: float | None = None) -> None:
        # Not Tool.__init__: there is no Python function to describe, the server has the schema.
        self.remote_name = listed.name
        self.name = _NAME_CHARS.sub("_", listed.name)[:64] or "tool"
        self.description = listed.description or listed.name
        self.schema = dict(listed.input_schema or {"type": "object", "properties": {}})
        self.session, self.timeout, self.approval = session, timeout, False
        self.is_async, self.context_param = True, None
        self._custom_args_model = None
        self.fn = self.call

    def __reduce__(self) -> Any:
        raise UserError(
            f"MCP tool {self.name!r} holds a live session and cannot be sent to another process",
            hint="give agents on Ray a RemoteToolBox.from_mcp(...) instead",
            tool=self.name,
        )

    def __repr__(self) -> str:
        return f"MCPTool(name={self.name!r})"

    @property
    def parameters(self) -> dict[str, Any]:
        """The JSON schema the server gave for the arguments."""
        return {k: v for k, v in self.schema.items() if k != "title"}

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The arguments as they are (the server validates them against its schema)."""
        if not isinstance(arguments, dict):
            raise TypeError(f"the arguments must be a JSON object, not {type(arguments).__name__}")
        return dict(arguments)

    async def _invoke(self, kwargs: dict[str, Any], deadline: float | None) -> Any:
        return await self.call(**kwargs)

    async def call(self, **arguments: Any) -> Any:
        """Call the tool on the server: its structured result, else its text."""
        try:
            result = await self.session.client.call_tool(self.remote_name, arguments)
        except Exception:
            self.session.broken = True  # no answer at all: the connection is gone
            raise
        text = "\n".join(_text(part) for part in result.content)
        if result.is_error:
            raise ToolError(text or f"MCP tool {self.remote_name!r} failed", tool=self.name)
        structured = result.structured_content
        if isinstance(structured, dict) and set(structured) == {"result"}:
            return structured["result"]  # a plain return value, wrapped by the server
        return structured if structured is not None else text


def _text(part: Any) -> str:
    text = getattr(part, "text", None)
    if isinstance(text, str):
        return text
    return json.dumps(part.model_dump(mode="json", exclude_none=True), ensure_ascii=False)


@contextlib.asynccontextmanager
async def mcp_tools(
    command: Sequence[str] | None = None,
    *,
    url: str | None = None,
    env: Mapping[str, str] | None = None,
    env_from: Sequence[str] = (),
    cwd: str | None = None,
    timeout: float | None = None,
) -> AsyncIterator[list[MCPTool]]:
    """The tools of the MCP server started with ``command`` (over stdio), or reached at
    ``url`` (streamable HTTP), for as long as the block runs.

    ``env``: plain settings for the server's environment (a secret-looking name is refused:
    pass it by name in ``env_from``, whose values are read from this process's environment).
    ``timeout``: each call's deadline, in seconds. A server that cannot start, or cannot be
    reached, is a ConfigurationError naming it (and the last line it wrote to stderr)."""
    check_server(command, url, env, env_from, cwd)
    Client, transport, errlog = _client_parts(command, url, env, env_from, cwd)
    what = f"MCP server {shlex.join(command)!r}" if command else f"MCP server at {url!r}"
    with errlog:
        try:
            client = await Client(transport).__aenter__()
        except Exception as exc:  # a missing command, a server that exits, a refused URL
            raise _failed_to_start(what, exc, errlog) from None
        try:
            listed = (await client.list_tools()).tools
            session = MCPSession(client)
            tools = [MCPTool(session, spec, timeout=timeout) for spec in listed]
            _check_unique(tools, what)
            yield tools
        finally:
            await client.__aexit__(None, None, None)


def _client_parts(
    command: Sequence[str] | None,
    url: str | None,
    env: Mapping[str, str] | None,
    env_from: Sequence[str],
    cwd: str | None,
) -> tuple[Any, Any, Any]:
    """The SDK's Client class, the transport to give it, and the file the server's stderr
    goes to (a stdio server's; an empty context otherwise)."""
    try:
        from mcp import Client
        from mcp.client.stdio import StdioServerParameters, stdio_client
    except ImportError:
        raise ConfigurationError(
            "MCP tools need the mcp package", hint='pip install "gecko-actors[mcp]"'
        ) from None
    if url is not None:
        return Client, url, contextlib.nullcontext()
    assert command is not None
    variables = _server_env(env or {}, env_from)
    # Closed by mcp_tools (`with errlog:`), once the server is gone.
    errlog = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")  # noqa: SIM115
    params = StdioServerParameters(
        command=command[0], args=list(command[1:]), env=variables, cwd=cwd
    )
    return Client, stdio_client(params, errlog=errlog), errlog


def check_server(
    command: Sequence[str] | None,
    url: str | None,
    env: Mapping[str, str] | None,
    env_from: Sequence[str],
    cwd: str | None,
) -> dict[str, Any]:
    """``mcp_tools``' keyword arguments for one server, checked (a UserError names the bad
    one): what a toolbox actor is given to start its own session with."""
    if (command is None) == (url is None):
        raise UserError("give an MCP server's command or its url, not both or neither")
    if command is not None and (
        isinstance(command, str) or not command or not all(isinstance(c, str) for c in command)
    ):
        raise UserError(
            f"an MCP server's command must be a list of strings, got {command!r:.80}",
            hint='e.g. command=["python", "server.py"]',
        )
    for name in env or {}:
        if is_secret_name(name):
            raise UserError(
                f"env holds {name!r}, which names a secret: its value would be an argument",
                hint=f'pass it by name, env_from=["{name}"], and set it in the environment',
            )
    if isinstance(env_from, str) or not all(isinstance(n, str) and n for n in env_from):
        raise UserError(f"env_from must be a list of variable names, got {env_from!r:.80}")
    return {
        "command": None if command is None else list(command),
        "url": url,
        "env": dict(env or {}),
        "env_from": list(env_from),
        "cwd": cwd,
    }


def _server_env(env: Mapping[str, str], env_from: Sequence[str]) -> dict[str, str]:
    missing = [name for name in env_from if name not in os.environ]
    if missing:
        raise ConfigurationError(
            f"the MCP server needs {', '.join(missing)}, which this process's environment "
            "does not set",
            hint="export it before starting the agent",
        )
    return {
        **{k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ},
        **{name: os.environ[name] for name in env_from},
        **dict(env),
    }


def _failed_to_start(what: str, exc: Exception, errlog: Any) -> ConfigurationError:
    last = ""
    if hasattr(errlog, "seek"):
        errlog.seek(0)
        lines = [line.strip() for line in errlog.read().splitlines() if line.strip()]
        last = lines[-1] if lines else ""
    reason = last or f"{type(exc).__name__}: {exc}"
    return ConfigurationError(
        f"{what} could not start: {reason[:300]}",
        hint="run the command by hand to see why; check its path and arguments",
    )


def _check_unique(tools: list[MCPTool], what: str) -> None:
    names = [t.name for t in tools]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(
            f"{what} lists tools whose names clash once made safe for model APIs: {twice}",
            hint="rename them on the server",
        )
