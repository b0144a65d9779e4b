"""Tests for the exception hierarchy: context, pickling, messages and redaction."""

from __future__ import annotations

import json
import pickle

import pytest

import gecko_actors
from gecko_actors import _redact, exceptions
from gecko_actors._redact import register_secret
from gecko_actors.exceptions import (
    CheckpointError,
    ConfigurationError,
    GeckoError,
    ModelError,
    RunError,
    TemplateError,
    ToolError,
    ToolNotFoundError,
    ToolTimeoutError,
    UserError,
    WorkflowError,
)

ALL_ERRORS = [getattr(exceptions, name) for name in exceptions.__all__]
SK_KEY = "sk" + "-proj-AbCdEfGh1234567890"


@pytest.fixture(autouse=True)
def _isolated_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets registered by a test stay in that test."""
    monkeypatch.setattr(_redact, "_secrets", set(_redact._secrets))


def test_all_lists_every_exception_class() -> None:
    defined = {
        name
        for name, value in vars(exceptions).items()
        if isinstance(value, type) and issubclass(value, GeckoError)
    }
    assert defined == set(exceptions.__all__)
    # ... and the package exports them all.
    assert set(exceptions.__all__) <= set(gecko_actors.__all__)
    for name in exceptions.__all__:
        assert getattr(gecko_actors, name) is getattr(exceptions, name)


def test_error_codes_are_unique() -> None:
    codes = [cls.error_code for cls in ALL_ERRORS]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_every_error_is_a_gecko_error_and_user_or_run_error(cls: type[GeckoError]) -> None:
    assert issubclass(cls, GeckoError)
    assert issubclass(cls, Exception)
    if cls is not GeckoError:
        assert issubclass(cls, UserError) != issubclass(cls, RunError)


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_context_hint_and_str(cls: type[GeckoError]) -> None:
    err = cls("step 'x' failed", hint="retry with y", run_id="r1", node="n", attempt=3)
    assert err.message == "step 'x' failed"
    assert err.hint == "retry with y"
    assert err.context == {"run_id": "r1", "node": "n", "attempt": 3}
    assert (err.run_id, err.node, err.attempt) == ("r1", "n", 3)
    assert str(err) == "step 'x' failed Hint: retry with y"
    assert repr(err) == f"{cls.__name__}({str(err)!r})"
    assert err.to_dict() == {
        "type": cls.__name__,
        "error_code": cls.error_code,
        "message": "step 'x' failed",
        "hint": "retry with y",
        "context": {"run_id": "r1", "node": "n", "attempt": "3"},
    }
    json.dumps(err.to_dict())


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_str_without_hint(cls: type[GeckoError]) -> None:
    err = cls("just the message")
    assert str(err) == "just the message"
    assert err.hint is None
    assert err.context == {}
    assert err.to_dict()["hint"] is None


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_pickle_round_trip_keeps_everything(cls: type[GeckoError]) -> None:
    err = cls("node 'n' failed", hint="check the node", run_id="r1", node="n", extra={"k": [1]})
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert back.message == err.message
    assert back.hint == err.hint
    assert back.context == err.context
    assert (back.run_id, back.node, back.extra) == ("r1", "n", {"k": [1]})
    assert back.args == err.args
    assert str(back) == str(err)
    assert repr(back) == repr(err)
    assert back.to_dict() == err.to_dict()


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_pickle_round_trip_when_raised(cls: type[GeckoError]) -> None:
    with pytest.raises(cls) as info:
        try:
            raise KeyError("inner")
        except KeyError as exc:
            raise cls("outer", tool="t") from exc
    back = pickle.loads(pickle.dumps(info.value))
    assert type(back) is cls
    assert back.tool == "t"
    assert str(back) == "outer"


@pytest.mark.parametrize(
    ("child", "parents"),
    [
        (UserError, [GeckoError]),
        (RunError, [GeckoError]),
        (ModelError, [RunError, GeckoError]),
        (ToolError, [RunError, GeckoError]),
        (WorkflowError, [RunError, GeckoError]),
        (CheckpointError, [RunError, GeckoError]),
        (ToolNotFoundError, [ToolError, RunError]),
        (ToolTimeoutError, [ToolError, RunError]),
        (ConfigurationError, [UserError, GeckoError]),
        (TemplateError, [UserError, GeckoError]),
    ],
)
def test_hierarchy(child: type[GeckoError], parents: list[type[GeckoError]]) -> None:
    for parent in parents:
        assert issubclass(child, parent)
    with pytest.raises(parents[0]):
        raise child("x")


@pytest.mark.parametrize(
    ("child", "not_parent"),
    [
        (UserError, RunError),
        (RunError, UserError),
        (ConfigurationError, RunError),
        (ToolError, ModelError),
        (ModelError, ToolError),
        (WorkflowError, ToolError),
    ],
)
def test_families_are_separate(child: type[GeckoError], not_parent: type[GeckoError]) -> None:
    assert not issubclass(child, not_parent)


def test_context_does_not_override_class_attributes() -> None:
    err = ToolError("x", error_code="hacked", tool="t")
    assert err.error_code == ToolError.error_code
    assert err.context["error_code"] == "hacked"
    assert err.tool == "t"


# --- redaction -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_sk_key_in_message_never_shows(cls: type[GeckoError]) -> None:
    err = cls(f"provider said: invalid key {SK_KEY}", hint=f"do not use {SK_KEY}", key=SK_KEY)
    for text in (str(err), repr(err), json.dumps(err.to_dict())):
        assert SK_KEY not in text
        assert "sk-proj" not in text
        assert "***" in text
    assert "provider said: invalid key" in str(err)
    back = pickle.loads(pickle.dumps(err))
    assert SK_KEY not in str(back)
    assert SK_KEY not in json.dumps(back.to_dict())


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_registered_secret_never_shows(cls: type[GeckoError]) -> None:
    secret = "correct-horse-battery-staple"
    register_secret(secret)
    err = cls(
        f"login with {secret} failed",
        hint=f"the password {secret!r} was refused",
        password=secret,
        run_id="r1",
    )
    for text in (str(err), repr(err), json.dumps(err.to_dict())):
        assert secret not in text
        assert "horse" not in text
    assert err.to_dict()["context"]["run_id"] == "r1"
    assert str(err).startswith("login with *** failed")


def test_secret_registered_after_the_error_is_built_is_still_masked() -> None:
    secret = "late-registered-value-123"
    err = ModelError(f"boom {secret}")
    register_secret(secret)
    assert secret not in str(err)
    assert secret not in err.to_dict()["message"]


def test_short_values_are_not_registered() -> None:
    register_secret("abc")
    register_secret("")
    register_secret(None)
    assert str(UserError("abc is fine")) == "abc is fine"
