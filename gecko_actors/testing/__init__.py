"""Test doubles for gecko_actors and for your own tests: nothing here needs a network or a key.

- :class:`ScriptedModel`: a deterministic in-process model (a list of replies, or a function
  of the conversation).
- :class:`FakeLLMServer` / :class:`FakeReply`: an OpenAI-compatible HTTP server on 127.0.0.1
  with scripted replies and fault injection, for the real HTTP path through LiteLLM.
- pytest fixtures ``fake_llm_server`` and ``make_fake_llm_server``: add
  ``pytest_plugins = ["gecko_actors.testing.pytest_plugin"]`` to your ``conftest.py``.
- :func:`replay`: run a recorded workflow run again offline, from its effect journal, and
  report the first step whose output differs (:class:`ReplayReport`).
"""

from gecko_actors.core.scripted import ScriptedCall, ScriptedModel
from gecko_actors.testing.fake_server import FakeLLMServer, FakeReply, FakeToolCall
from gecko_actors.testing.replay import Difference, ReplayMiss, ReplayReport, replay

__all__ = [
    # models and providers
    "FakeLLMServer",
    "FakeReply",
    "FakeToolCall",
    "ScriptedCall",
    "ScriptedModel",
    # offline replay
    "Difference",
    "ReplayMiss",
    "ReplayReport",
    "replay",
]
