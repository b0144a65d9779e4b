"""Test doubles for gecko_actors and for your own tests: nothing here needs a network or a key.

- :class:`ScriptedModel`: a deterministic in-process model (a list of replies, or a function
  of the conversation).
- :class:`FakeLLMServer` / :class:`FakeReply`: an OpenAI-compatible HTTP server on 127.0.0.1
  with scripted replies and fault injection, for the real HTTP path through LiteLLM.
- pytest fixtures ``fake_llm_server`` and ``make_fake_llm_server``: add
  ``pytest_plugins = ["gecko_actors.testing.pytest_plugin"]`` to your ``conftest.py``.
"""

from gecko_actors.core.scripted import ScriptedCall, ScriptedModel
from gecko_actors.testing.fake_server import FakeLLMServer, FakeReply, FakeToolCall

__all__ = ["FakeLLMServer", "FakeReply", "FakeToolCall", "ScriptedCall", "ScriptedModel"]
