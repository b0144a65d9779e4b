"""An MCP server for the tests, written with the SDK's MCPServer: ``shop.py`` serves over stdio,
``shop.py http PORT`` over streamable HTTP on 127.0.0.1."""

from __future__ import annotations

import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("shop")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@server.tool(name="stock.lookup")
def stock(item: str) -> dict:
    """How many of an item are in stock."""
    return {"item": item, "count": len(item)}


@server.tool()
def refuse(reason: str) -> str:
    """Always fails, saying why (a ToolError's message reaches the client)."""
    raise ToolError(f"refused: {reason}")


@server.tool()
def token() -> str:
    """The token the server was given, or 'none'."""
    return os.environ.get("GECKO_TEST_MCP_TOKEN", "none")


@server.tool()
def pid() -> int:
    """The server's process id."""
    return os.getpid()


@server.tool()
def crash() -> str:
    """Kills the server's process in the middle of the call."""
    os._exit(1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
