"""Settings read from ``GECKO_*`` environment variables (and an optional ``.env`` file).

:func:`load_settings` gives every caller an object of its own, so one model's configuration
never leaks into another's; it reads the sources again whenever a ``GECKO_*`` variable or the
``.env`` file has changed, so a test that changes the environment sees the change.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from gecko_actors.exceptions import ConfigurationError

API_KEY_VARIABLE = "GECKO_API_KEY"
"""The variable of the ``api_key`` setting. On Ray a model keyed by this setting carries the
name, never the value: its gateway reads the key from its own environment or ``.env``."""


class Settings(BaseSettings):
    """Project-wide defaults; every field maps to ``GECKO_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="GECKO_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    default_model: str = "openai/gpt-4o-mini"
    api_key: SecretStr | None = None
    """The default models' key (``GECKO_API_KEY``). On Ray only its name travels: gateways read
    it from their own environment, or from ``.env`` in their working directory."""
    api_base: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, gt=0)
    model_timeout: float = Field(default=60.0, gt=0)
    model_retries: int = Field(default=2, ge=0)
    max_turns: int = Field(default=5, gt=0)
    max_context_tokens: int = Field(default=4000, gt=0)
    tool_timeout: float = Field(default=30.0, gt=0)
    tool_max_concurrency: int = Field(default=5, gt=0)
    max_image_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    storage_url: str = "sqlite:///gecko_runs/sessions.db"
    """Where agent actors' conversations persist (``memory://`` keeps them in memory)."""
    workflow_linger: float = Field(default=60.0, ge=0)
    """Seconds a finished workflow's coordinator stays to answer its handles before it exits
    (afterwards handles read the run's outcome from its checkpoint); a workflow host keeps a
    finished run in memory for as long."""
    host_max_runs: int = Field(default=2000, gt=0)
    """Runs one workflow host drives at once; a start beyond it goes to another host of the
    pool, or fails with ``HostBusy`` when every host is full."""
    warm_hosts: bool = True
    """``init()`` starts the job's first workflow host and its agent hosts in the background,
    so that the first ``Workflow.start`` or agent call does not wait for a process."""
    host_idle_exit: float = Field(default=600.0, ge=0)
    """Seconds a workflow host that holds no run waits before it exits (0: never); the next
    start makes it again."""
    hosts_per_node: int = Field(default=1, gt=0)
    """Workflow hosts per alive node in a job's pool (new runs spread over them)."""
    agent_hosts_per_node: int = Field(default=2, gt=0)
    """Agent hosts per alive node in a job's pool (new agents spread over them by name). A
    host is one Python process, so it uses one core: more hosts use more of a node's."""
    journal_models: bool = False
    """Whether runs journal their model calls when neither the run nor its workflow says
    (``wf.start(..., journal_models=)``, ``Workflow(..., journal_models=)``). The tests turn
    it on, so that every run they make can be replayed offline."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "WARNING"
    log_format: Literal["console", "json"] = "console"
    secrets: list[SecretStr] = Field(default_factory=list)
    """Extra values to mask in logs and exception text (``GECKO_SECRETS='["a","b"]'``)."""


def load_settings(**overrides: object) -> Settings:
    """The settings as the environment and ``.env`` say now (a copy of its own for each
    caller); invalid values are a :class:`ConfigurationError` naming them."""
    if overrides:
        return _read(overrides)
    key = _source_key()
    found = _READ.get(key)
    if found is None:
        found = _READ[key] = _read({})
        while len(_READ) > 8:  # environments seen lately (tests change them often)
            del _READ[next(iter(_READ))]
    return found.model_copy(deep=True)


# Settings read per state of their sources: reading them (pydantic-settings parses the .env
# file and every variable) costs milliseconds, and a spawn of 10,000 agents asks each time.
_READ: dict[tuple[Any, ...], Settings] = {}


def _source_key() -> tuple[Any, ...]:
    """What the settings are read from: the GECKO_ variables (names in any case) and the
    .env file of the working directory (which file, its size and modification time; no
    path: a Ray job's driver may run in a folder that is gone)."""
    variables = tuple(
        sorted((k, v) for k, v in os.environ.items() if k.upper().startswith("GECKO_"))
    )
    try:
        info = os.stat(".env")
        dotenv: Any = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    except OSError:  # no .env here: the same settings as anywhere else without one
        dotenv = None
    return (variables, dotenv)


def _read(overrides: dict[str, object]) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except SettingsError as exc:
        # A value that is not valid JSON for a list setting (GECKO_SECRETS) fails before
        # validation, with a pydantic-settings error naming the field.
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"GECKO_{field[1].upper()}" if field else "a GECKO_* variable"
        raise ConfigurationError(
            f"invalid gecko_actors settings: {name} could not be parsed ({exc})",
            hint='list settings take a JSON array, e.g. GECKO_SECRETS=\'["a", "b"]\'',
        ) from None
    except ValidationError as exc:
        # loc[0] is the field; deeper parts are list indexes, not part of the variable's name.
        fields = dict.fromkeys(str(e["loc"][0]) for e in exc.errors() if e["loc"])
        names = ", ".join(f"GECKO_{field.upper()}" for field in fields)
        raise ConfigurationError(
            f"invalid gecko_actors settings: {names}",
            hint=f"fix these environment variables: {exc.errors(include_url=False)}",
        ) from None


def settings_api_key() -> str | None:
    """The ``GECKO_API_KEY`` setting as this process sees it (its environment first, then
    ``.env`` in its working directory), or ``None``."""
    key = load_settings().api_key
    return key.get_secret_value() if key is not None else None


def prepare_offline_environment() -> None:
    """Make litellm and tiktoken work without a network, without importing litellm.

    litellm downloads its price map at import unless ``LITELLM_LOCAL_MODEL_COST_MAP`` is set,
    and tiktoken downloads its encodings at first use unless ``TIKTOKEN_CACHE_DIR`` points at a
    folder holding them; litellm ships one (``litellm_core_utils/tokenizers``). A value the user
    set is kept.
    """
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return
    folder = _litellm_tokenizers_dir()
    if folder is not None:
        os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)


def _litellm_tokenizers_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
    return folder if folder.is_dir() else None
