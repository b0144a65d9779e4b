"""Pytest fixtures for :class:`~gecko_actors.testing.fake_server.FakeLLMServer`.

Enable them in a ``conftest.py``::

    pytest_plugins = ["gecko_actors.testing.pytest_plugin"]

then script the model in a test::

    async def test_agent_answers(fake_llm_server):
        fake_llm_server.push(FakeReply.text("Paris"))
        response = await litellm.acompletion(
            model="openai/fake-model",
            api_base=fake_llm_server.url,
            api_key="test-key",
            messages=[{"role": "user", "content": "Capital of France?"}],
        )
        assert response.choices[0].message.content == "Paris"

Under it, workflow runs journal their model calls by default (``GECKO_JOURNAL_MODELS``), so
that a run a test makes can be replayed offline; set ``GECKO_JOURNAL_MODELS=0`` to turn that
off, or say so per run (``wf.start(..., journal_models=False)``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from gecko_actors.testing.fake_server import FakeLLMServer, FakeReply

__all__ = ["fake_llm_server", "make_fake_llm_server"]

os.environ.setdefault("GECKO_JOURNAL_MODELS", "1")  # before Ray starts: its workers inherit it

#: Signature of the factory returned by :func:`make_fake_llm_server`.
FakeLLMServerFactory = Callable[..., FakeLLMServer]


@pytest.fixture
def fake_llm_server() -> Iterator[FakeLLMServer]:
    """A started :class:`FakeLLMServer` with an empty script, stopped after the test.

    Script it with :meth:`FakeLLMServer.push` and point clients at ``fake_llm_server.url``.
    A chat request arriving when no reply is left is answered HTTP 500 with a message saying the
    script ran out of replies.

    Yields:
        The running server.
    """
    server = FakeLLMServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_fake_llm_server() -> Iterator[FakeLLMServerFactory]:
    """A factory building and starting :class:`FakeLLMServer` instances for one test.

    The factory takes the same arguments as :class:`FakeLLMServer` (``replies`` positionally,
    then ``handler=``, ``model=``, ``stream_chunk_chars=``, ...) and returns a started server.
    Every server it built is stopped at teardown, so a test can run several (e.g. one per
    model deployment).

    Example::

        def test_fallback(make_fake_llm_server):
            primary = make_fake_llm_server([FakeReply.server_error(503)])
            backup = make_fake_llm_server([FakeReply.text("ok")])

    Yields:
        The factory.
    """
    servers: list[FakeLLMServer] = []

    def factory(replies: Iterable[FakeReply] = (), **kwargs: Any) -> FakeLLMServer:
        server = FakeLLMServer(replies, **kwargs)
        servers.append(server)
        return server.start()

    try:
        yield factory
    finally:
        for server in servers:
            server.stop()
