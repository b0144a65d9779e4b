"""The cluster-wide rate limit on Ray, counted where a provider counts it: at the server."""

from __future__ import annotations

import bisect
import time
import urllib.request
import uuid
from typing import Any

import pytest

from gecko_actors import Agent, LiteLLMModel, ModelGateway, Team
from gecko_actors.testing import FakeLLMServer, FakeReply

WINDOW = 2.0  # seconds
LIMIT = 40  # requests per window: 20 per second, within what 4 replicas send on 2 cores


def wait_for_metric(port: int, name: str, label: str, timeout: float = 30) -> bool:
    """Whether a sample of ``name`` with ``label`` and a positive value appears on the
    metrics endpoint within ``timeout`` (Ray exports every second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
                lines = page.read().decode().splitlines()
        except OSError:
            lines = []
        samples = [line for line in lines if line.startswith(name) and label in line]
        if any(float(line.split()[-1]) > 0 for line in samples):
            return True
        time.sleep(0.5)
    return False


def most_in_a_window(times: list[float], window: float) -> int:
    """The most arrivals any window ``(t - window, t]`` holds (checking the windows ending at
    an arrival suffices)."""
    times = sorted(times)
    return max(
        bisect.bisect_right(times, t) - bisect.bisect_right(times, t - window) for t in times
    )


def test_no_window_at_the_server_exceeds_the_limit_while_4_replicas_push(ray_session: Any) -> None:
    with FakeLLMServer(handler=lambda body: FakeReply.text("ok", usage=(5, 1))) as server:
        # A model litellm has a price for (from its local price map): the spend is exported.
        model = LiteLLMModel(
            "openai/gpt-4o-mini",
            api_base=server.url,
            api_key_env="GECKO_EXAMPLE_KEY",
            num_retries=0,
            timeout=61,
        )
        gateway = ModelGateway.spawn(
            model, replicas=4, requests_per_minute=LIMIT, window_seconds=WINDOW
        )
        tag = uuid.uuid4().hex[:6]
        team = Team([Agent.spawn(f"push-{tag}-{i}", model=gateway) for i in range(8)])
        try:
            calls = int(LIMIT * 2.5)  # two full windows and half a third
            outputs = team.map(["hi"] * calls, max_in_flight=64, progress=False)
            assert [o.content for o in outputs] == ["ok"] * calls
            arrivals = server.request_times
            assert len(arrivals) == calls
            # The limiter's own record: it never granted more than the limit in any window.
            granted = [r.start_at for r in gateway.limiter_reservations()]
            assert len(granted) >= calls and most_in_a_window(granted, WINDOW) <= LIMIT
            # At the server, a request permitted in one window arrives after litellm's own
            # work, which on two loaded cores takes a variable time (the README's Performance
            # section): the server's windows may bunch by a few requests, never by many.
            assert most_in_a_window(arrivals, WINDOW) <= LIMIT * 1.1
            # ...and the limit is what held them back: the 81st request cannot arrive before
            # the first two windows have passed (however the machine's load shifted them).
            assert arrivals[-1] - arrivals[0] > 1.5 * WINDOW
            # Replicas leased permits in batches: fewer messages to the limiter than calls.
            assert gateway.limiter_stats()["messages"] < calls
            # What it cost: 100 calls of 5 + 1 tokens at gpt-4o-mini's price, in the gateways'
            # usage and in the metric, per model.
            spent = gateway.usage().cost
            assert spent == pytest.approx(calls * (5 * 0.15e-6 + 1 * 0.6e-6))
            metric, label = "ray_gecko_llm_cost_usd_total", 'model="openai/gpt-4o-mini"'
            assert wait_for_metric(ray_session.metrics_port, metric, label)
        finally:
            for agent in team.members:
                agent.kill()
            gateway.kill()
