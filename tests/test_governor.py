"""The cluster-wide rate limit on Ray, counted where a provider counts it: at the server."""

from __future__ import annotations

import bisect
import uuid

import pytest

from gecko_actors import Agent, LiteLLMModel, ModelGateway, Team
from gecko_actors.testing import FakeLLMServer, FakeReply

WINDOW = 2.0  # seconds
LIMIT = 40  # requests per window: 20 per second, within what 4 replicas send on 2 cores


def most_in_a_window(times: list[float], window: float) -> int:
    """The most arrivals any window ``(t - window, t]`` holds (checking the windows ending at
    an arrival suffices)."""
    times = sorted(times)
    return max(
        bisect.bisect_right(times, t) - bisect.bisect_right(times, t - window) for t in times
    )


@pytest.mark.usefixtures("ray_session")
def test_no_window_at_the_server_exceeds_the_limit_while_4_replicas_push() -> None:
    with FakeLLMServer(handler=lambda body: FakeReply.text("ok", usage=(5, 1))) as server:
        model = LiteLLMModel("openai/fake", api_base=server.url, api_key_env="GECKO_EXAMPLE_KEY",
                             num_retries=0, timeout=61)  # fmt: skip
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
            assert most_in_a_window(arrivals, WINDOW) <= LIMIT
            # ...and the limit is what held them back: the 81st request cannot arrive before
            # the first two windows have passed (however the machine's load shifted them).
            assert arrivals[-1] - arrivals[0] > 1.5 * WINDOW
            # Replicas leased permits in batches: fewer messages to the limiter than calls.
            assert gateway.limiter_stats()["messages"] < calls
        finally:
            for agent in team.members:
                agent.kill()
            gateway.kill()
