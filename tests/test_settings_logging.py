"""Tests for settings, the offline environment, secret redaction and logging."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from pydantic import SecretStr

from gecko_actors import _redact
from gecko_actors import logging as gecko_logging
from gecko_actors._redact import MASK, redact, register_secret
from gecko_actors.exceptions import ConfigurationError, UserError
from gecko_actors.logging import configure_logging, get_logger
from gecko_actors.settings import Settings, load_settings, prepare_offline_environment

SK_KEY = "sk" + "-abcdefghijklmnop1234"
PASSWORD = "hunter2hunter2"
LOGGER_NAMES = ("gecko_actors", *gecko_logging._THIRD_PARTY)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No GECKO_* variable and no .env file from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("GECKO_"):
            monkeypatch.delenv(name)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return workdir


@pytest.fixture(autouse=True)
def isolated_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets registered by a test stay in that test."""
    monkeypatch.setattr(_redact, "_secrets", set(_redact._secrets))


@pytest.fixture
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Put the loggers, their handlers and structlog's configuration back after the test."""
    saved = {}
    for name in LOGGER_NAMES:
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.level, logger.propagate)
    config = structlog.get_config()
    monkeypatch.setattr(gecko_logging, "_configured", gecko_logging._configured)
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
    structlog.configure(**config)


def unset(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Remove ``name`` so that whatever the code sets later is undone at teardown too."""
    monkeypatch.setenv(name, "placeholder")
    monkeypatch.delenv(name)


# --- settings --------------------------------------------------------------------------------


def test_defaults() -> None:
    settings = load_settings()
    assert isinstance(settings, Settings)
    assert settings.max_turns == 5
    assert settings.api_key is None
    assert settings.log_format == "console"
    assert settings.secrets == []


def test_reads_gecko_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GECKO_MAX_TURNS", "7")
    monkeypatch.setenv("GECKO_API_KEY", SK_KEY)
    monkeypatch.setenv("GECKO_LOG_FORMAT", "json")
    monkeypatch.setenv("GECKO_TEMPERATURE", "0.5")
    monkeypatch.setenv("GECKO_SECRETS", '["first-secret", "second-secret"]')
    settings = load_settings()
    assert settings.max_turns == 7
    assert settings.log_format == "json"
    assert settings.temperature == 0.5
    assert isinstance(settings.api_key, SecretStr)
    assert settings.api_key.get_secret_value() == SK_KEY
    assert [s.get_secret_value() for s in settings.secrets] == ["first-secret", "second-secret"]
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert SK_KEY not in text
        assert "first-secret" not in text


def test_variables_are_case_insensitive_and_unprefixed_ones_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("gecko_max_turns", "4")
    monkeypatch.setenv("MAX_TURNS", "99")
    assert load_settings().max_turns == 4


@pytest.mark.parametrize("value", ["0", "-1", "abc", "2.5"])
def test_invalid_value_is_a_configuration_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("GECKO_MAX_TURNS", value)
    with pytest.raises(ConfigurationError, match="GECKO_MAX_TURNS") as info:
        load_settings()
    assert isinstance(info.value, UserError)
    assert info.value.hint


def test_every_invalid_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GECKO_MAX_TURNS", "0")
    monkeypatch.setenv("GECKO_LOG_FORMAT", "xml")
    monkeypatch.setenv("GECKO_TEMPERATURE", "3")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    for name in ("GECKO_MAX_TURNS", "GECKO_LOG_FORMAT", "GECKO_TEMPERATURE"):
        assert name in info.value.message


def test_invalid_list_item_names_the_variable_not_an_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GECKO_SECRETS", '["good-secret", 5]')
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert info.value.message == "invalid gecko_actors settings: GECKO_SECRETS"


def test_unparsable_list_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GECKO_SECRETS", "not json at all")
    with pytest.raises(ConfigurationError, match="GECKO_SECRETS") as info:
        load_settings()
    assert "JSON array" in (info.value.hint or "")


def test_overrides_win_and_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GECKO_MAX_TURNS", "7")
    assert load_settings(max_turns=3).max_turns == 3
    with pytest.raises(ConfigurationError, match="GECKO_MAX_TURNS"):
        load_settings(max_turns=0)


def test_settings_are_read_fresh_on_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GECKO_MAX_TURNS", "7")
    first = load_settings()
    monkeypatch.setenv("GECKO_MAX_TURNS", "9")
    second = load_settings()
    monkeypatch.delenv("GECKO_MAX_TURNS")
    third = load_settings()
    assert (first.max_turns, second.max_turns, third.max_turns) == (7, 9, 5)
    assert first is not second


def test_overrides_do_not_leak_into_later_calls() -> None:
    assert load_settings(default_model="openai/other").default_model == "openai/other"
    assert load_settings().default_model != "openai/other"


def test_dotenv_file_in_cwd_is_read(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    (clean_env / ".env").write_text(
        "GECKO_MAX_TURNS=11\nGECKO_DEFAULT_MODEL=openai/from-dotenv\nUNRELATED=1\n",
        encoding="utf-8",
    )
    settings = load_settings()
    assert settings.max_turns == 11
    assert settings.default_model == "openai/from-dotenv"
    # A real environment variable beats the file.
    monkeypatch.setenv("GECKO_MAX_TURNS", "12")
    assert load_settings().max_turns == 12


def test_dotenv_in_another_directory_is_not_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / ".env").write_text("GECKO_MAX_TURNS=11\n", encoding="utf-8")
    assert load_settings().max_turns == 5
    monkeypatch.chdir(other)
    assert load_settings().max_turns == 11


def test_invalid_dotenv_value_is_a_configuration_error(clean_env: Path) -> None:
    (clean_env / ".env").write_text("GECKO_MAX_TURNS=lots\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="GECKO_MAX_TURNS"):
        load_settings()


# --- offline environment ---------------------------------------------------------------------


def tiktoken_cache_name(encoding: str) -> str:
    """The file name tiktoken looks for in TIKTOKEN_CACHE_DIR."""
    url = f"https://openaipublic.blob.core.windows.net/encodings/{encoding}.tiktoken"
    return hashlib.sha1(url.encode()).hexdigest()


def test_prepare_offline_environment_sets_both_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    unset(monkeypatch, "LITELLM_LOCAL_MODEL_COST_MAP")
    unset(monkeypatch, "TIKTOKEN_CACHE_DIR")
    prepare_offline_environment()
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    folder = Path(os.environ["TIKTOKEN_CACHE_DIR"])
    assert folder.is_dir()
    assert (folder / tiktoken_cache_name("cl100k_base")).is_file()
    assert (folder / tiktoken_cache_name("o200k_base")).is_file()


def test_prepare_offline_environment_keeps_user_values(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "False")
    prepare_offline_environment()
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(tmp_path)
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "False"


def test_prepare_offline_environment_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    unset(monkeypatch, "TIKTOKEN_CACHE_DIR")
    prepare_offline_environment()
    first = os.environ["TIKTOKEN_CACHE_DIR"]
    prepare_offline_environment()
    assert os.environ["TIKTOKEN_CACHE_DIR"] == first


# --- redaction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"invalid key {SK_KEY} given", SK_KEY),
        ("key sk" + "-proj-AbC_dEf-123456789", "sk" + "-proj-AbC_dEf-123456789"),
        ("Authorization: Bearer abc.DEF-ghi_123~+/xyz==", "abc.DEF-ghi_123~+/xyz"),
        ("header bearer abcdefgh12345678", "abcdefgh12345678"),
        ("GET /v1?api_key=abcd1234xyz&other=1", "abcd1234xyz"),
        ("api-key: zyxw9876", "zyxw9876"),
        ('{"api_key": "q1w2e3r4t5"}', "q1w2e3r4t5"),
        ("{'secret_key': 'mysecretvalue'}", "mysecretvalue"),
        ("password=hunter22 user=bob", "hunter22"),
        ('"token": "tok_0123456789"', "tok_0123456789"),
    ],
)
def test_credential_shaped_text_is_masked(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert MASK in out


def test_masking_keeps_the_surrounding_text() -> None:
    assert redact(f"invalid key {SK_KEY} given") == "invalid key *** given"
    assert redact("GET /v1?api_key=abcd1234xyz&other=1") == "GET /v1?api_key=***&other=1"
    assert redact('{"api_key": "q1w2e3r4t5", "n": 1}') == '{"api_key": "***", "n": 1}'
    assert redact("sent Bearer abcdefgh12345678 to it") == "sent Bearer *** to it"
    # The header name is itself a secret-naming key: the whole value goes, scheme and all.
    assert redact("Authorization: Bearer abcdefgh12345678") == "Authorization: ***"


@pytest.mark.parametrize(
    "text",
    [
        "max_tokens=100",
        "prompt_tokens: 12",
        "completion_tokens=1234, total_tokens=5678",
        '{"prompt_tokens": 12, "total_tokens": 30}',
        "task-1234567890 on disk-abcdefghij",
        "the token is short: abc",
        "sk-short",
        "a bearer of news",
        "",
    ],
)
def test_ordinary_text_is_untouched(text: str) -> None:
    assert redact(text) == text


def test_registered_secret_is_masked() -> None:
    register_secret(PASSWORD)
    assert redact(f"user said {PASSWORD}!") == "user said ***!"
    assert redact(f"{PASSWORD}{PASSWORD}") == "******"


def test_longer_secret_is_masked_before_its_prefix() -> None:
    register_secret("abcdef")
    register_secret("abcdef-and-more")
    assert redact("x abcdef-and-more y") == "x *** y"


def test_short_secrets_are_not_registered() -> None:
    register_secret("abc12")
    assert redact("abc12 stays") == "abc12 stays"


@pytest.mark.parametrize("secret", ['pa"ss\\word1', "pässwörd123", "it's-a-secret\n"])
def test_escaped_forms_of_registered_secrets_are_masked(secret: str) -> None:
    register_secret(secret)
    for rendered in (
        json.dumps({"note": secret}),
        json.dumps({"note": secret}, ensure_ascii=False),
        repr({"note": secret}),
        secret,
    ):
        out = redact(rendered)
        assert secret not in out
        assert MASK in out
        assert "word1" not in out
        assert "wörd" not in out
        assert "w\\u00f6rd" not in out
        assert "a-secret" not in out


def test_environment_secrets_are_masked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_redact, "_env_scanned", False)
    monkeypatch.setenv("FOO_API_KEY", "env-secret-value-1")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "env-token-value-2")
    monkeypatch.setenv("DB_PASSWORD", "env-password-3")
    monkeypatch.setenv("BAR_SECRET", "short")  # under the minimum length: not a secret
    text = "env-secret-value-1 env-token-value-2 env-password-3 short"
    assert redact(text) == "*** *** *** short"
    assert _redact._env_scanned is True


def test_environment_scan_ignores_token_counts_and_tokenizer_paths(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache = str(tmp_path / "tiktoken-cache")
    monkeypatch.setattr(_redact, "_env_scanned", False)
    monkeypatch.setenv("GECKO_MAX_CONTEXT_TOKENS", "120000")
    monkeypatch.setenv("GECKO_MAX_TOKENS", "2048000")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", cache)
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_realtoken123")
    text = f"context 120000 max 2048000 cache {cache} gh ghp_realtoken123"
    assert redact(text) == f"context 120000 max 2048000 cache {cache} gh ***"


def test_environment_is_scanned_only_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_redact, "_env_scanned", False)
    redact("first call scans")
    monkeypatch.setenv("LATE_API_KEY", "late-secret-value")
    assert redact("late-secret-value") == "late-secret-value"


# --- logging ---------------------------------------------------------------------------------


def lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line.strip()]


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in lines(stream)]


def gecko_handlers(name: str = "gecko_actors") -> list[logging.Handler]:
    return [h for h in logging.getLogger(name).handlers if h.get_name() == "gecko_actors"]


@pytest.mark.usefixtures("restore_logging")
def test_json_line_is_valid_and_redacted() -> None:
    register_secret(PASSWORD)
    stream = io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=stream)
    get_logger("x", agent="a").info("hello", api_key=SK_KEY, note=f"secret is {PASSWORD}")
    output = stream.getvalue()
    assert SK_KEY not in output
    assert PASSWORD not in output
    (record,) = json_lines(stream)
    assert record["event"] == "hello"
    assert record["agent"] == "a"
    assert record["level"] == "info"
    assert record["logger"] == "gecko_actors.x"
    assert record["api_key"] == MASK
    assert record["note"] == f"secret is {MASK}"
    assert "timestamp" in record


@pytest.mark.usefixtures("restore_logging")
def test_json_line_masks_secrets_that_json_escapes() -> None:
    secret = 'pa"ss\\wörd-42'
    register_secret(secret)
    stream = io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=stream)
    get_logger("x").info("login", note=f"pw {secret}", nested={"pw": secret})
    (record,) = json_lines(stream)
    assert record["note"] == f"pw {MASK}"
    assert secret not in json.dumps(record, ensure_ascii=False)
    assert "rd-42" not in stream.getvalue()


@pytest.mark.usefixtures("restore_logging")
def test_console_format() -> None:
    register_secret(PASSWORD)
    stream = io.StringIO()
    configure_logging(level="INFO", fmt="console", stream=stream)
    get_logger("x", agent="a").info("hello", api_key=SK_KEY, note=f"secret is {PASSWORD}")
    (line,) = lines(stream)
    assert "hello" in line
    assert "agent=a" in line
    assert "info" in line
    assert "gecko_actors.x" in line
    assert SK_KEY not in line
    assert PASSWORD not in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


@pytest.mark.usefixtures("restore_logging")
def test_level_filters_gecko_records() -> None:
    stream = io.StringIO()
    configure_logging(level="warning", fmt="json", stream=stream)
    log = get_logger("x")
    log.info("dropped")
    log.warning("kept")
    assert [r["event"] for r in json_lines(stream)] == ["kept"]
    assert logging.getLogger("gecko_actors").level == logging.WARNING


@pytest.mark.usefixtures("restore_logging")
def test_third_party_records_are_redacted_through_the_same_handler() -> None:
    stream = io.StringIO()
    configure_logging(level="DEBUG", fmt="json", stream=stream)
    (handler,) = gecko_handlers()
    for name in ("litellm", "LiteLLM", "httpx", "openai"):
        assert gecko_handlers(name) == [handler]
        assert logging.getLogger(name).level == logging.WARNING
        assert logging.getLogger(name).propagate is False

    third_party = logging.getLogger("litellm")
    third_party.info("info is below WARNING %s", SK_KEY)
    third_party.warning("key %s rejected", SK_KEY)
    assert SK_KEY not in stream.getvalue()
    (record,) = json_lines(stream)
    assert record["event"] == f"key {MASK} rejected"
    assert record["level"] == "warning"
    assert record["logger"] == "litellm"


@pytest.mark.usefixtures("restore_logging")
def test_exception_traceback_is_redacted() -> None:
    register_secret(PASSWORD)
    stream = io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=stream)
    log = get_logger("x")
    try:
        raise ValueError(f"bad key {SK_KEY} for {PASSWORD}")
    except ValueError:
        log.exception("call failed", run_id="r1")
    assert SK_KEY not in stream.getvalue()
    assert PASSWORD not in stream.getvalue()
    (record,) = json_lines(stream)
    assert record["event"] == "call failed"
    assert record["level"] == "error"
    assert record["run_id"] == "r1"
    assert "Traceback" in record["exception"]
    assert f"ValueError: bad key {MASK} for {MASK}" in record["exception"]


@pytest.mark.usefixtures("restore_logging")
def test_third_party_exception_traceback_is_redacted() -> None:
    stream = io.StringIO()
    configure_logging(level="INFO", fmt="console", stream=stream)
    try:
        raise RuntimeError(f"Authorization: Bearer {SK_KEY}")
    except RuntimeError:
        logging.getLogger("openai").exception("request failed")
    output = stream.getvalue()
    assert "request failed" in output
    assert "RuntimeError" in output
    assert SK_KEY not in output


@pytest.mark.usefixtures("restore_logging")
def test_configure_twice_leaves_one_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=first)
    configure_logging(level="INFO", fmt="json", stream=second)
    for name in LOGGER_NAMES:
        assert len(gecko_handlers(name)) == 1
    get_logger("x").info("once")
    logging.getLogger("httpx").warning("third party once")
    assert first.getvalue() == ""
    assert [r["event"] for r in json_lines(second)] == ["once", "third party once"]


@pytest.mark.usefixtures("restore_logging")
def test_configure_keeps_foreign_handlers() -> None:
    foreign = logging.NullHandler()
    logging.getLogger("gecko_actors").addHandler(foreign)
    configure_logging(level="INFO", fmt="json", stream=io.StringIO())
    assert foreign in logging.getLogger("gecko_actors").handlers
    assert len(gecko_handlers()) == 1


@pytest.mark.usefixtures("restore_logging")
def test_defaults_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GECKO_LOG_FORMAT", "json")
    monkeypatch.setenv("GECKO_LOG_LEVEL", "ERROR")
    stream = io.StringIO()
    configure_logging(stream=stream)
    log = get_logger("x")
    log.warning("dropped")
    log.error("kept")
    assert [r["event"] for r in json_lines(stream)] == ["kept"]


@pytest.mark.usefixtures("restore_logging")
def test_configure_registers_configured_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GECKO_SECRETS", '["configured-secret-1"]')
    monkeypatch.setenv("GECKO_API_KEY", "plain-api-key-value")
    stream = io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=stream)
    get_logger("x").info("values", a="configured-secret-1", b="plain-api-key-value")
    (record,) = json_lines(stream)
    assert (record["a"], record["b"]) == (MASK, MASK)
    assert redact("configured-secret-1") == MASK


@pytest.mark.usefixtures("restore_logging")
def test_get_logger_names_live_under_gecko_actors() -> None:
    stream = io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=stream)
    get_logger("memory").info("a")
    get_logger("gecko_actors.engine").info("b")
    get_logger().info("c")
    assert [r["logger"] for r in json_lines(stream)] == [
        "gecko_actors.memory",
        "gecko_actors.engine",
        "gecko_actors",
    ]


@pytest.mark.usefixtures("restore_logging")
def test_get_logger_configures_logging_on_first_use_not_on_creation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    def fake_configure() -> None:
        calls.append(1)
        monkeypatch.setattr(gecko_logging, "_configured", True)

    monkeypatch.setattr(gecko_logging, "_configured", False)
    monkeypatch.setattr(gecko_logging, "configure_logging", fake_configure)
    log = get_logger("x")
    assert calls == []  # creating a logger (as modules do at import) configures nothing
    log.debug("first use")
    assert calls == [1]
    log.debug("second use")
    get_logger("y").debug("another logger")
    assert calls == [1]


def test_settings_are_read_again_when_the_env_changes_and_in_a_folder_that_is_gone(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("GECKO_MAX_TURNS", "7")
    assert load_settings().max_turns == 7
    monkeypatch.setenv("GECKO_MAX_TURNS", "8")  # a changed variable is seen at once
    first = load_settings()
    assert first.max_turns == 8
    first.max_turns = 99  # each caller's own copy
    assert load_settings().max_turns == 8
    (tmp_path / ".env").write_text("GECKO_MAX_TURNS=9\n")
    monkeypatch.delenv("GECKO_MAX_TURNS")
    monkeypatch.chdir(tmp_path)
    assert load_settings().max_turns == 9  # this folder's .env
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()  # as a Ray job's driver may find its working folder
    assert load_settings().max_turns == 5
