"""ModelGateway actors: the one place litellm runs.

Agents never import litellm (it costs ~160 MB and ~2 s per process). Their model calls go to a
small pool of async gateway replicas per model configuration; every replica asks one limiter
actor for a start time before each request, so requests- and tokens-per-minute limits hold
across the whole cluster, and a 429's Retry-After pauses every replica, not one call.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextvars import ContextVar
from typing import Any

import ray

from gecko_actors import metrics
from gecko_actors.core import tracing
from gecko_actors.core.engine import current_run
from gecko_actors.core.leases import PermitPool
from gecko_actors.core.messages import Message, Usage
from gecko_actors.core.models import ModelResponse, ToolChoice, ToolSchema
from gecko_actors.core.ratelimit import (
    RateLimits,
    Reservation,
    SlidingWindowLimiter,
    estimate_tokens,
    lease_hold,
)
from gecko_actors.exceptions import ModelError
from gecko_actors.logging import get_logger

_RUNS_KEPT = 10_000  # per-run usage is kept for the most recent runs only
_reservation: ContextVar[int | None] = ContextVar("gecko_reservation", default=None)
_log = get_logger("gecko_actors.gateway")


class LimiterActor:
    """Owns the cluster-wide sliding window for one model configuration; replicas lease
    permits from it in batches (``core/leases.py``)."""

    def __init__(self, limits: RateLimits) -> None:
        self._limiter = SlidingWindowLimiter(limits, hold=lease_hold(limits))
        self._holders: dict[str, Any] = {}  # the replicas holding permits, to revoke them
        self._messages = 0

    def configure(self, limits: RateLimits) -> None:
        """New limits for the model; reservations already made keep counting."""
        self._limiter.limits = limits
        self._limiter.hold = max(self._limiter.hold, lease_hold(limits))  # leases held stand

    def exchange(
        self,
        count: int,
        tokens: int,
        settled: list[tuple[int, int]],
        released: list[int],
        holder: tuple[str, Any] | None = None,
    ) -> tuple[float, list[tuple[int, float]]]:
        """One replica's message: settle its calls' usage, take back its unused permits, and
        lease it ``count`` more of ``tokens`` each. Answers the hold and the grants."""
        self._messages += 1
        for reservation_id, actual in settled:
            self._limiter.settle(reservation_id, actual)
        self._limiter.release(released)
        if holder is not None:  # (its actor id, its handle)
            self._holders[holder[0]] = holder[1]
        grants = self._limiter.lease(count, tokens)
        return self._limiter.hold, [(r.id, r.delay) for r in grants]

    def pause(self, seconds: float, source: str | None = None) -> None:
        """A Retry-After: no reservation starts for ``seconds``, and every replica holding
        permits (but ``source``, which revoked its own) gives them back."""
        self._limiter.pause(seconds)
        for key, holder in self._holders.items():
            if key != source:
                holder.revoke.remote(seconds)

    def stats(self) -> dict[str, float]:
        """The limiter's stats, and ``messages``: how many exchanges replicas sent."""
        return {**self._limiter.stats(), "messages": float(self._messages)}

    def recent_reservations(self) -> list[Reservation]:
        return self._limiter.recent_reservations()


class GatewayActor:
    """One replica: a LiteLLMModel, usage accounting, and the limiter's permission per call."""

    def __init__(self, config: dict[str, Any], limiter: Any | None) -> None:
        from gecko_actors.core.litellm_model import LiteLLMModel

        self.model = LiteLLMModel(**config)
        # Every attempt, retries included, waits for the cluster-wide limiter.
        self.model.before_attempt = self._acquire
        self.model.on_rate_limited = self._pause_everyone
        self.limiter = limiter
        self.permits: PermitPool | None = None  # leased from the limiter, made on first use
        self.by_agent: dict[str, Usage] = {}
        self.by_run: OrderedDict[str, Usage] = OrderedDict()

    def set_limiter(self, limiter: Any) -> None:
        """Start asking ``limiter`` (limits were requested of a gateway already running)."""
        self.limiter = limiter
        self.permits = None

    async def check(self) -> bool:
        """Raise ConfigurationError (naming the variable) if the key is missing here; then
        import litellm and run one offline call (``mock_response``) now rather than during
        the first user request: litellm loads most of its code on its first call (~0.5 s),
        which would hold that request between its rate-limit permit and the provider."""
        from gecko_actors.core.litellm_model import _litellm

        self.model.validate_environment()
        litellm = _litellm()
        with contextlib.suppress(Exception):  # best effort: a real call would warm it too
            await litellm.acompletion(
                model=self.model.model,
                messages=[{"role": "user", "content": "warm up"}],
                mock_response="ok",
                api_key="not-used",
            )
        return True

    async def complete(
        self, messages: list[Message], options: dict[str, Any], caller: dict[str, Any]
    ) -> ModelResponse:
        start = time.perf_counter()
        with tracing.span(
            f"gateway {self.model.model}", self._span_attributes(caller), caller.get("trace")
        ):
            try:
                response = await self.model.complete(messages, **options)
            except ModelError:
                self._record(caller, Usage(), start, "error")
                raise
        self._record(caller, response.usage, start, "ok")
        return response

    async def stream(
        self, messages: list[Message], options: dict[str, Any], caller: dict[str, Any]
    ) -> AsyncIterator[str | ModelResponse]:
        start = time.perf_counter()
        usage, status, error = Usage(), "error", None
        attributes = self._span_attributes(caller)
        span = tracing.start_span(f"gateway {self.model.model}", attributes, caller.get("trace"))
        try:
            async for item in self.model.stream(messages, **options):
                if isinstance(item, ModelResponse):
                    usage, status = item.usage, "ok"
                yield item
        except BaseException as exc:
            error = exc
            raise
        finally:
            tracing.end_span(span, error)
            self._record(caller, usage, start, status)

    def _span_attributes(self, caller: dict[str, Any]) -> dict[str, Any]:
        return {
            "gen_ai.request.model": self.model.model,
            "gecko.agent": caller.get("agent"),
            "gecko.agent_run_id": caller.get("run_id"),
        }

    def usage(self, agent: str | None = None, run_id: str | None = None) -> Usage:
        if run_id is not None:
            return self.by_run.get(run_id, Usage())
        if agent is not None:
            return self.by_agent.get(agent, Usage())
        return sum(self.by_agent.values(), Usage())

    # --- internals ----------------------------------------------------------------------

    async def _acquire(self, messages: Sequence[Message]) -> None:
        if self.limiter is None:
            return
        tokens = estimate_tokens(messages, self.model.max_tokens)
        permit, waited = await self._permits().acquire(tokens)
        _reservation.set(permit)  # this call's task only: settled with real usage
        if waited > 0.001:
            metrics.ratelimit_wait(self.model.model, waited)

    def _permits(self) -> PermitPool:
        if self.permits is None:
            context = ray.get_runtime_context()
            limiter = self.limiter
            me: list[Any] = [(context.get_actor_id(), context.current_actor)]

            async def exchange(count: int, tokens: int, settled: Any, released: Any) -> Any:
                # This replica's handle goes with its first message only (for revoke).
                holder = me.pop() if me else None
                try:
                    return await limiter.exchange.remote(count, tokens, settled, released, holder)
                except BaseException:
                    me.extend([holder] if holder else [])  # not delivered: send it again
                    raise

            self.permits = PermitPool(exchange)
        return self.permits

    def revoke(self, seconds: float) -> None:
        """Another replica got a Retry-After: use none of this one's permits for a while."""
        if self.permits is not None:
            self.permits.revoke(seconds)

    async def _pause_everyone(self, seconds: float) -> None:
        if self.limiter is not None:
            self.revoke(seconds)
            await self.limiter.pause.remote(seconds, ray.get_runtime_context().get_actor_id())

    def _record(
        self,
        caller: dict[str, Any],
        usage: Usage,
        start: float,
        status: str,
    ) -> None:
        agent = caller.get("agent") or "-"
        self.by_agent[agent] = self.by_agent.get(agent, Usage()) + usage
        run_id = caller.get("run_id")
        if run_id:
            self.by_run[run_id] = self.by_run.get(run_id, Usage()) + usage
            self.by_run.move_to_end(run_id)
            while len(self.by_run) > _RUNS_KEPT:
                self.by_run.popitem(last=False)
        reservation = _reservation.get()
        if reservation is not None and self.permits is not None and usage.total_tokens:
            self.permits.settle(reservation, usage.total_tokens)
        metrics.llm_request(
            self.model.model,
            status,
            time.perf_counter() - start,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cost,
        )


class EmbeddingGatewayActor:
    """One replica serving a :class:`LiteLLMEmbedder` (memory actors embed through it)."""

    def __init__(self, embedder: Any) -> None:
        from gecko_actors.core.litellm_model import _litellm

        self.embedder = embedder
        _litellm()

    def check(self) -> bool:
        """Raise ConfigurationError (naming the variable) if the key, or a variable of
        ``extra_env`` / ``headers_env``, is missing here."""
        self.embedder.validate_environment()
        return True

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return await self.embedder.embed(texts)


class _ReplicaProxy:
    """Round robin over named gateway replicas. Picklable: it carries actor names and
    resolves handles in whatever process it lands in."""

    def __init__(self, label: str, replica_names: Sequence[str], namespace: str) -> None:
        self.label = label
        self.replica_names = list(replica_names)
        self.namespace = namespace
        self._handles: list[Any] | None = None
        self._next = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r}, replicas={len(self.replica_names)})"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": None}

    def _replica(self) -> Any:
        if self._handles is None:
            self._handles = [ray.get_actor(n, namespace=self.namespace) for n in self.replica_names]
        self._next = (self._next + 1) % len(self._handles)
        return self._handles[self._next]


class GatewayEmbedder(_ReplicaProxy):
    """The :class:`~gecko_actors.core.embedders.Embedder` a memory actor holds for a LiteLLM
    embedding model: calls go through embedding gateway replicas."""

    def __init__(
        self, label: str, replica_names: Sequence[str], namespace: str, dimensions: int | None
    ) -> None:
        super().__init__(label, replica_names, namespace)
        self.dimensions = dimensions

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return await self._replica().embed.remote(list(texts))


class GatewayModel(_ReplicaProxy):
    """The :class:`~gecko_actors.core.models.ChatModel` agents hold: it forwards each call to
    a gateway replica and never imports litellm. ``origin`` is what made the gateway (the
    model's configuration, without secrets, and its limits), so that it can be made again."""

    supports_tools = True
    supports_stream = True

    def __init__(
        self,
        label: str,
        replica_names: Sequence[str],
        namespace: str,
        origin: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(label, replica_names, namespace)
        self.origin = origin

    @property
    def model(self) -> str:
        """The LiteLLM model the gateway serves (``openai/gpt-4o-mini``), for traces."""
        config = (self.origin or {}).get("model") or {}
        return config.get("model") or self.label

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSchema] | None = None,
        tool_choice: ToolChoice | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> ModelResponse:
        options = {"tools": tools, "tool_choice": tool_choice, "response_format": response_format}
        return await self._replica().complete.remote(list(messages), options, _caller())

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSchema] | None = None,
        tool_choice: ToolChoice | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> AsyncIterator[str | ModelResponse]:
        options = {"tools": tools, "tool_choice": tool_choice, "response_format": response_format}
        replica = self._replica()
        refs = replica.stream.options(num_returns="streaming").remote(
            list(messages), options, _caller()
        )
        async for ref in refs:
            yield await ref


def _caller() -> dict[str, Any]:
    return dict(current_run.get() or {})
