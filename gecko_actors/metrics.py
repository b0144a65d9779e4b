"""Metrics through Ray's own channel (``ray.util.metrics``).

They appear on every node's metrics endpoint as ``ray_gecko_*`` and in the dashboard's
Grafana. Metric objects are created lazily, once per process, the first time they are used;
outside a Ray worker or a connected driver every call is a no-op.
"""

from __future__ import annotations

from functools import cache
from typing import Any

_LATENCY_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120]
_WAIT_BUCKETS = [0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60]


@cache
def _metric(kind: str, name: str, description: str, tags: tuple[str, ...]) -> Any:
    from ray.util import metrics

    if kind == "counter":
        return metrics.Counter(name, description=description, tag_keys=tags)
    if kind == "gauge":
        return metrics.Gauge(name, description=description, tag_keys=tags)
    buckets = _WAIT_BUCKETS if "wait" in name else _LATENCY_BUCKETS
    return metrics.Histogram(name, description=description, boundaries=buckets, tag_keys=tags)


def _enabled() -> bool:
    import ray

    return ray.is_initialized()


def llm_request(
    model: str,
    status: str,
    latency: float,
    prompt_tokens: int,
    completion_tokens: int,
    cost: float | None = None,
) -> None:
    """One LLM request. Labels stay bounded (model, status): one series per agent would grow
    with the agents; per-agent usage is in the gateway's usage records and the logs."""
    if not _enabled():
        return
    _metric(
        "counter",
        "gecko_llm_requests_total",
        "LLM requests by model and status",
        ("model", "status"),
    ).inc(1, {"model": model, "status": status})
    tokens = _metric(
        "counter", "gecko_llm_tokens_total", "LLM tokens by model and kind", ("model", "kind")
    )
    if prompt_tokens:
        tokens.inc(prompt_tokens, {"model": model, "kind": "prompt"})
    if completion_tokens:
        tokens.inc(completion_tokens, {"model": model, "kind": "completion"})
    _metric("histogram", "gecko_llm_latency_seconds", "LLM request latency", ("model",)).observe(
        latency, {"model": model}
    )
    if cost:  # the provider's price of the usage, where litellm knows it
        _metric(
            "counter", "gecko_llm_cost_usd_total", "LLM spend in dollars by model", ("model",)
        ).inc(cost, {"model": model})


def ratelimit_wait(model: str, seconds: float) -> None:
    if _enabled():
        _metric(
            "histogram",
            "gecko_llm_ratelimit_wait_seconds",
            "Time LLM requests waited for the cluster-wide rate limit",
            ("model",),
        ).observe(seconds, {"model": model})


def tool_call(tool: str, status: str) -> None:
    if _enabled():
        _metric(
            "counter", "gecko_tool_calls_total", "Tool calls by tool and status", ("tool", "status")
        ).inc(1, {"tool": tool, "status": status})


def agent_run(host: str, status: str) -> None:
    """One agent run, labelled by where it ran (an agent host's name, or ``dedicated``): a
    bounded label, where the agent's name would make a series per agent."""
    if _enabled():
        _metric(
            "counter",
            "gecko_agent_runs_total",
            "Agent runs by host and status",
            ("host", "status"),
        ).inc(1, {"host": host, "status": status})


def runs_active(host: str, count: int) -> None:
    """How many runs a workflow host drives now (``gecko_runs_active``, per host)."""
    if _enabled():
        _metric("gauge", "gecko_runs_active", "Workflow runs a host drives now", ("host",)).set(
            count, {"host": host}
        )
