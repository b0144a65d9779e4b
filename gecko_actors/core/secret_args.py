"""Secrets a model needs, passed by environment-variable name and read where the call is made.

On Ray a model's configuration becomes an actor's constructor arguments, which Ray keeps in its
actor table; so a model bound for Ray carries the *names* of the variables holding its secrets
(``api_key_env``, ``extra_env``, ``headers_env``), and anything that looks like a secret value
is refused before an actor is created.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

from pydantic import SecretStr

from gecko_actors._redact import (
    is_credentials_path,
    is_flag_value,
    is_secret_name,
    is_secret_value,
    register_secret,
    url_holds_secret,
)
from gecko_actors.exceptions import ConfigurationError, UserError
from gecko_actors.settings import API_KEY_VARIABLE, settings_api_key

__all__ = [
    "HEADER_ARGUMENTS",
    "env_arguments",
    "read_key",
    "refuse_secret_arguments",
    "register_extra_secrets",
    "resolve_env_arguments",
    "secret_leaves",
    "url_holds_secret",  # one definition, in _redact: re-exported for the models
]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
HEADER_ARGUMENTS = ("extra_headers", "headers")


def read_key(variable: str, model: str) -> str:
    """The key in environment variable ``variable``, registered for redaction; a missing one is
    a :class:`ConfigurationError` naming it. Read where the call is made, never shipped.

    ``GECKO_API_KEY`` is a setting, so ``.env`` in this process's working directory counts too
    (a local Ray's workers start in the driver's directory; a cluster's nodes need the variable).
    """
    value = os.environ.get(variable)
    if not value and variable == API_KEY_VARIABLE:
        value = settings_api_key()
    if not value:
        where = " (or in .env in its working directory)" if variable == API_KEY_VARIABLE else ""
        raise ConfigurationError(
            f"environment variable {variable!r} is not set for model {model!r}",
            hint=f"export {variable} in the environment of the process that calls"
            f"{where}; on a Ray cluster, in every node's environment",
            model=model,
        )
    register_secret(value)
    return value


# --- secrets passed by variable name -----------------------------------------------------------


def env_arguments(
    model: str,
    extra: Mapping[str, Any],
    extra_env: Mapping[str, str] | None,
    headers_env: Mapping[str, str] | None,
    *,
    reserved: Collection[str],
) -> tuple[dict[str, str], dict[str, str]]:
    """Check and copy ``extra_env`` and ``headers_env`` (argument or header -> variable name);
    a bad name, a reserved argument or one also given as a value is a :class:`UserError`.
    The header arguments (``extra_headers``, ``headers``) are reserved for ``extra_env``:
    header values go in ``headers_env``, one variable per header."""
    headers_given = [
        name
        for argument in HEADER_ARGUMENTS
        if isinstance(extra.get(argument), Mapping)
        for name in extra[argument]
    ]
    arguments = _env_mapping(
        "extra_env",
        extra_env,
        _ENV_NAME,
        model,
        reserved=[*reserved, *HEADER_ARGUMENTS],
        given=extra.keys(),
    )
    headers = _env_mapping("headers_env", headers_env, _HEADER_NAME, model, given=headers_given)
    return arguments, headers


_RESERVED_HINT = "use the model's own parameter (api_key_env= for the key)"
# A whole header dictionary read from one variable would be a string where litellm expects a
# dict (and clash with headers_env at call time): headers are named one by one.
_RESERVED_HINTS = {
    argument: "name each header's variable in headers_env={'Header': 'NAME'}"
    for argument in HEADER_ARGUMENTS
}


def _env_mapping(
    parameter: str,
    mapping: Mapping[str, str] | None,
    name_pattern: re.Pattern[str],
    model: str,
    *,
    reserved: Collection[str] = (),
    given: Collection[str] = (),
) -> dict[str, str]:
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise UserError(
            f"{parameter} must be a dict of names to environment-variable names, "
            f"got a {type(mapping).__name__}",
            hint=f'e.g. {parameter}={{"name": "MY_VARIABLE"}}',
            model=model,
        )
    taken = {name.lower() for name in given if isinstance(name, str)}
    result: dict[str, str] = {}
    for name, variable in mapping.items():
        if not isinstance(name, str) or not name_pattern.fullmatch(name):
            raise UserError(f"{parameter} has an invalid name {name!r}", model=model)
        if name in reserved:
            raise UserError(
                f"{parameter} cannot set {name!r}",
                hint=_RESERVED_HINTS.get(name, _RESERVED_HINT),
                model=model,
            )
        if name.lower() in taken:
            raise UserError(
                f"{name!r} is given both as a value and in {parameter}",
                hint=f"keep only the variable's name, in {parameter}",
                model=model,
            )
        # The value is never echoed: a user who passed the secret itself by mistake would
        # otherwise find it in the error message.
        if not isinstance(variable, str) or not _ENV_NAME.fullmatch(variable):
            raise UserError(
                f"{parameter}[{name!r}] must be the name of an environment variable "
                "(letters, digits and '_'), not a value",
                hint=f"export MY_VARIABLE=<value> where the model runs and pass "
                f"{parameter}={{{name!r}: 'MY_VARIABLE'}}",
                model=model,
            )
        result[name] = variable
    return result


def resolve_env_arguments(
    request: dict[str, Any],
    extra_env: Mapping[str, str],
    headers_env: Mapping[str, str],
    model: str,
) -> None:
    """Put the values of ``extra_env`` and ``headers_env`` into ``request``, read now from
    this process's environment (a missing variable is a :class:`ConfigurationError`)."""
    for argument, variable in extra_env.items():
        request[argument] = read_key(variable, model)
    if headers_env:
        # A copy: the model's own extra_headers must not keep the secret values.
        headers = dict(request.get("extra_headers") or {})
        headers.update({h: read_key(variable, model) for h, variable in headers_env.items()})
        request["extra_headers"] = headers


def secret_leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """``(path, value)`` of every secret inside ``value`` (nested dicts and lists): values
    under a secret-looking name (``aws_secret_access_key``, an ``Authorization`` header) and
    credential-shaped strings (``Bearer ...``, ``sk-...``). Paths name, never show, values.

    A dict under a secret-looking name is searched rather than flagged: a JSON schema in
    ``response_format``, ``tools`` or ``extra_body`` may have a property called ``token`` or
    ``password``, whose own keys (``type``, ``description``) decide. Flags (``True``, ``"1"``,
    ``"false"``), numbers and empty values under such names carry nothing secret.
    """
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{path}[{key!r}]" if path else str(key)
            # A credentials path (vertex_credentials="/etc/sa.json") names a file, not a secret.
            if isinstance(key, str) and is_secret_name(key) and not is_credentials_path(key, item):
                yield from _named_secret_leaves(item, where)
            else:
                yield from secret_leaves(item, where)
    elif isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            yield from secret_leaves(item, f"{path}[{index}]")
    elif _is_secret_leaf(value):
        yield path, value


def _named_secret_leaves(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """The secrets in ``value``, found under a secret-looking name: every value it carries
    (a list's items too: several keys, several cookies), but a dict is searched by its own
    keys."""
    if isinstance(value, Mapping):
        yield from secret_leaves(value, path)
    elif isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            yield from _named_secret_leaves(item, f"{path}[{index}]")
    elif value is not None and value not in ("", b"") and not is_flag_value(value):
        yield path, value


def _is_secret_leaf(value: Any) -> bool:
    if isinstance(value, SecretStr):
        return True
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return isinstance(value, str) and is_secret_value(value)


def register_extra_secrets(extra: Mapping[str, Any]) -> None:
    """Mask the secret values among ``extra`` in logs and exception text (in-process use may
    pass them as values)."""
    for _, value in secret_leaves(extra):
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            register_secret(value)


def refuse_secret_arguments(what: str, model: str, paths: Sequence[str]) -> None:
    """Raise a :class:`UserError` naming ``paths``, the arguments of ``what`` ``model`` that
    hold secret values, with how to pass each kind by environment-variable name instead."""
    if not paths:
        return
    hints = []
    if "api_key" in paths:
        hints.append("api_key_env='NAME' for the key")
    if any(p.startswith(HEADER_ARGUMENTS) for p in paths):
        hints.append("headers_env={'Header': 'NAME'} for HTTP headers")
    if any(p not in ("api_key", "api_base") and not p.startswith(HEADER_ARGUMENTS) for p in paths):
        hints.append("extra_env={'argument': 'NAME'} for other arguments")
    if "api_base" in paths:
        hints.append("a header in headers_env rather than credentials in api_base")
    raise UserError(
        f"{what} {model!r} holds secret values in {', '.join(paths)}: on Ray they would be "
        "copied into the gateway actor's arguments, which Ray keeps in its actor table",
        hint=f"pass them by environment-variable name, read inside the gateway at call time: "
        f"{'; '.join(hints)}. NAME must be set in the environment where the gateway runs "
        "(every node's, on a cluster)",
        model=model,
        arguments=list(paths),
    )
