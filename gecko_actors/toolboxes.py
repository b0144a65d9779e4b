"""``RemoteToolBox``: tools served by toolbox actors, usable wherever a ToolBox is."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from gecko_actors._actors.common import cancel_and_wait, check_name, create, lookup, unwrap
from gecko_actors._actors.toolbox import ToolboxActor
from gecko_actors.core.messages import ToolCall
from gecko_actors.core.toolbox import ToolBox, gather_all, per_call
from gecko_actors.core.tools import Tool, ToolContext, ToolResult, error_text
from gecko_actors.core.tracing import with_trace
from gecko_actors.exceptions import ToolError, UserError
from gecko_actors.runtime import namespace

_TRANSPORT_GRACE = 5.0  # seconds on top of a tool's timeout before the replica counts as stuck


@dataclass(frozen=True)
class ToolInfo:
    """What an agent needs to know of a remote tool to describe it to the model."""

    name: str
    description: str


class RemoteToolBox:
    """Tools running in ``replicas`` toolbox actors named ``toolbox/<name>/<i>``.

    One toolbox may serve many agents. CPU-heavy tools ask for ``num_cpus`` (and GPUs) per
    replica, so that several replicas run them in parallel processes. A tool that hangs is
    abandoned at its timeout and its process recycled; a replica that dies mid-call turns the
    call into an error result for the model — never a hang, never a silent retry of a side
    effect.

    Example:
        >>> box = RemoteToolBox.spawn("math", [calculator], replicas=2, num_cpus=1)
        >>> agent = Agent.spawn("analyst", model=model, tools=box)
    """

    def __init__(self, name: str, replica_names: list[str], description: dict[str, Any]) -> None:
        self.name = name
        self.replica_names = replica_names
        self._schemas: list[dict[str, Any]] = description["schemas"]
        self._tools = [ToolInfo(n, d) for n, d in description["tools"]]
        self.timeout: float = description["timeout"]
        self._tool_timeouts: dict[str, float] = description.get("tool_timeouts", {})
        self._namespace = namespace()
        self._handles: list[Any] | None = None
        self._next = 0

    def __repr__(self) -> str:
        replicas = len(self.replica_names)
        return f"RemoteToolBox({self.name!r}, tools={self.names()}, replicas={replicas})"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": None}

    @classmethod
    def spawn(
        cls,
        name: str,
        tools: ToolBox | Iterable[Tool | Callable[..., Any]],
        *,
        replicas: int = 1,
        num_cpus: float = 0,
        num_gpus: float = 0,
        timeout: float = 30.0,
        max_concurrency: int = 5,
        get_if_exists: bool = False,
        **actor_options: Any,
    ) -> RemoteToolBox:
        """Serve ``tools`` from ``replicas`` actors ``toolbox/<name>/<i>`` (CPUs or GPUs
        each, if asked), shared by any number of agents; ``timeout`` and
        ``max_concurrency`` bound each replica's calls."""
        box = (
            tools
            if isinstance(tools, ToolBox)
            else ToolBox(tools, timeout=timeout, max_concurrency=max_concurrency)
        )
        args = (name, box.tools(), box.timeout, box.max_concurrency)
        options = {"num_cpus": num_cpus, "num_gpus": num_gpus, **actor_options}
        return cls._replicated(ToolboxActor, name, args, replicas, get_if_exists, options)

    @classmethod
    def from_mcp(
        cls,
        name: str,
        command: list[str] | None = None,
        *,
        url: str | None = None,
        env: dict[str, str] | None = None,
        env_from: list[str] | tuple[str, ...] = (),
        cwd: str | None = None,
        replicas: int = 1,
        timeout: float = 30.0,
        max_concurrency: int = 5,
        keepalive: float = 30.0,
        get_if_exists: bool = False,
        **actor_options: Any,
    ) -> RemoteToolBox:
        """A toolbox of the tools of an MCP server: started with ``command`` (stdio) or
        reached at ``url`` (streamable HTTP) by each replica, which owns its session, pings
        the server every ``keepalive`` seconds and starts it again when it is gone. Secrets
        go by name (``env_from``): each replica reads their values from its own environment
        (the cluster's, or the job's ``runtime_env``), so no value travels in an actor
        argument. A server that cannot start is a ConfigurationError naming its command and
        the last line of its stderr."""
        from gecko_actors._actors.mcp_toolbox import MCPToolboxActor
        from gecko_actors.core.mcp_tools import check_server

        server = check_server(command, url, env, env_from, cwd)
        args = (name, server, timeout, max_concurrency, keepalive)
        return cls._replicated(MCPToolboxActor, name, args, replicas, get_if_exists, actor_options)

    @classmethod
    def _replicated(
        cls,
        actor_cls: type,
        name: str,
        args: tuple[Any, ...],
        replicas: int,
        get_if_exists: bool,
        options: dict[str, Any],
    ) -> RemoteToolBox:
        """Start ``replicas`` actors ``toolbox/<name>/<i>`` of ``actor_cls``; a first replica
        that cannot describe its tools (a server that does not start) takes them all down."""
        if replicas < 1:
            raise UserError(f"replicas must be >= 1, got {replicas}")
        base = check_name("toolbox", name)
        names = [f"{base}/{i}" for i in range(replicas)]
        handles = [
            create(
                ray.remote(actor_cls),
                replica,
                args,
                get_if_exists=get_if_exists,
                max_task_retries=0,
                max_concurrency=1000,
                **options,
            )
            for replica in names
        ]
        try:
            description = ray.get(handles[0].describe.remote())
        except ray.exceptions.RayTaskError as exc:
            for handle in handles:
                ray.kill(handle)
            raise unwrap(exc) from None
        return cls(name, names, description)

    @classmethod
    def get(cls, name: str) -> RemoteToolBox:
        base = check_name("toolbox", name)
        replicas = [n for n in ray.util.list_named_actors() if n.startswith(f"{base}/")]
        if not replicas:
            available = sorted(_toolbox_names())
            raise UserError(
                f"no toolbox named {name!r}; known toolboxes: {available}",
                hint="spawn it with RemoteToolBox.spawn(name, tools)",
            )
        replicas.sort(key=lambda n: int(n.rsplit("/", 1)[1]))
        return cls(name, replicas, ray.get(lookup(replicas[0]).describe.remote()))

    def description(self) -> dict[str, Any]:
        """What the replicas described (this handle's constructor argument), as plain data."""
        return {
            "schemas": self._schemas,
            "tools": [(t.name, t.description) for t in self._tools],
            "timeout": self.timeout,
            "tool_timeouts": self._tool_timeouts,
        }

    # --- the ToolBox surface the engine uses --------------------------------------------

    def schemas(self) -> list[dict[str, Any]]:
        return list(self._schemas)

    def tools(self) -> list[ToolInfo]:
        return list(self._tools)

    def names(self) -> list[str]:
        return [t.name for t in self._tools]

    def has(self, name: str) -> bool:
        return name in self.names()

    async def execute_many(
        self, calls: Sequence[ToolCall], context: ToolContext | Sequence[ToolContext] | None = None
    ) -> list[ToolResult]:
        """Run tool calls concurrently on the replicas; results in call order. ``context`` is
        one for all calls or one per call; cancelling the caller cancels every call and
        returns once all of them have stopped."""
        contexts = per_call(context, len(calls))
        return await gather_all(
            self.execute_call(c, x) for c, x in zip(calls, contexts, strict=True)
        )

    async def execute_call(self, call: ToolCall, context: ToolContext | None = None) -> ToolResult:
        """Run one call on a replica; a failure of the replica becomes an error result.

        Cancelling the caller cancels the call in the replica (an async tool stops at its
        next ``await``; a sync tool's thread is waited for until its timeout) and returns once
        it has stopped; a replica that does not confirm in time is restarted.
        """
        replica = self._replica()
        ref = replica.execute_call.remote(call, with_trace(context))
        allowed = self._tool_timeouts.get(call.name, self.timeout)
        limit = allowed + _TRANSPORT_GRACE
        try:
            result = await asyncio.wait_for(_resolve(ref), limit)
        except asyncio.CancelledError:
            if not await cancel_and_wait([ref], grace=limit):
                ray.kill(replica, no_restart=False)  # stuck: a new process is a stopped one
            raise
        except RayActorError as exc:
            reason = f"its toolbox process died while running it ({type(exc).__name__})"
        except asyncio.TimeoutError:
            ray.kill(replica, no_restart=False)  # stuck past its own timeout: restart it
            reason = f"its toolbox process stopped answering for {allowed}s"
        except RayError as exc:  # not the tool's error (that is a result): Ray's, or a bug's
            reason = f"its toolbox process could not run it ({type(exc).__name__})"
        else:
            # Redacted again here: the replica knows only its own process's secrets, not the
            # ones registered in this one.
            if result.is_error:
                result = result.model_copy(update={"content": error_text(result.content)})
            return result
        return ToolResult(
            content=error_text(
                f"Error: tool {call.name[:80]!r} failed: {reason}; it was not retried, "
                "because it may have had side effects"
            ),
            is_error=True,
            tool=call.name,
            tool_call_id=call.id,
            metadata={"error": ToolError.error_code},
        )

    def stats(self) -> dict[str, dict[str, float]]:
        """Per-tool statistics summed over the replicas."""
        merged: dict[str, dict[str, float]] = {}
        for part in ray.get([h.stats.remote() for h in self._all()]):
            for tool_name, stats in part.items():
                into = merged.setdefault(tool_name, dict.fromkeys(stats, 0.0))
                for key in ("executions", "errors", "timeouts", "total_time"):
                    into[key] += stats[key]
        for stats in merged.values():
            runs = stats["executions"]
            stats["avg_time"] = stats["total_time"] / runs if runs else 0.0
            stats["success_rate"] = (runs - stats["errors"]) / runs if runs else 1.0
        return merged

    def kill(self) -> None:
        for handle in self._all():
            ray.kill(handle, no_restart=True)

    def _all(self) -> list[Any]:
        if self._handles is None:
            self._handles = [
                ray.get_actor(n, namespace=self._namespace) for n in self.replica_names
            ]
        return self._handles

    def _replica(self) -> Any:
        handles = self._all()
        self._next = (self._next + 1) % len(handles)
        return handles[self._next]


async def _resolve(ref: Any) -> Any:
    return await ref


def _toolbox_names() -> set[str]:
    return {n.split("/")[1] for n in ray.util.list_named_actors() if n.startswith("toolbox/")}
