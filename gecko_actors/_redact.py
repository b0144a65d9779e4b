"""One redaction step for log lines and exception text.

Secrets are masked in two ways: values registered explicitly (an API key handed to a model, a
configured secret) and values that look like credentials (``sk-...`` keys, bearer tokens,
``api_key=...`` pairs). Environment variables whose names say they hold a secret are registered
the first time anything is redacted, so a key read from the environment is masked even if it
leaks through a third-party error message.
"""

from __future__ import annotations

import json
import os
import re
import threading

MASK = "***"
_MIN_SECRET_LEN = 6
# TOKEN only as a whole word: GITHUB_TOKEN is a secret, GECKO_MAX_TOKENS and TIKTOKEN_CACHE_DIR
# are not (masking their values would hide ordinary numbers and paths everywhere).
_SECRET_ENV_NAME = re.compile(
    r"(API_?KEY|(?<![A-Z])TOKEN(?![A-Z])|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.I
)
_PATTERNS = (
    # OpenAI / Anthropic / many providers' key shapes.
    re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/\-]{8,}=*"),
    # key=value and "key": "value" pairs whose key names a secret.
    re.compile(
        r"(?i)((?:api[_-]?key|access[_-]?key|secret[_-]?key|token|secret|password|authorization)"
        r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',}&]{4,})"
    ),
)

# Names of arguments, headers and variables that hold a secret. Substrings catch compounds
# ("aws_secret_access_key", "vertex_credentials"); whole words catch "api_key", "x-api-key",
# "azure_ad_token", "DB_PASS" without catching "max_tokens" or "TIKTOKEN_CACHE_DIR".
_SECRET_SUBSTRINGS = (
    "secret",
    "password",
    "passwd",
    "credential",
    "authorization",
    "apikey",
    "cookie",
    "privatekey",
)
_SECRET_WORDS = frozenset({"key", "token", "pwd", "pass"})
_NAME_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
# Values shaped like credentials whatever they are called.
_VALUE_PATTERNS = (
    _PATTERNS[0],
    _PATTERNS[1],
    _PATTERNS[2],
    re.compile(r"(?i)\bbasic\s+[A-Za-z0-9+/]{8,}=*"),
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\."),  # JWTs
    re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|xox[abprs]-[A-Za-z0-9\-]{10,})"),
    re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}"),  # Google API keys
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
)

_lock = threading.Lock()
_secrets: set[str] = set()
_env_scanned = False


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it appears in logs or exception text from now on."""
    if value and len(value) >= _MIN_SECRET_LEN:
        # Rendered log lines escape the value: JSON (quotes, backslashes, non-ASCII) and the
        # console renderer's repr(); mask those forms too.
        forms = {
            value,
            json.dumps(value)[1:-1],
            json.dumps(value, ensure_ascii=False)[1:-1],
            repr(value)[1:-1],
        }
        with _lock:
            _secrets.update(forms)


def is_secret_name(name: str) -> bool:
    """Whether an argument, header or variable called ``name`` holds a secret by its name
    (``api_key``, ``aws_secret_access_key``, ``Authorization``, ``x-api-key``, ``HF_TOKEN``...).
    """
    lowered = name.lower()
    if any(part in lowered for part in _SECRET_SUBSTRINGS):
        return True
    return any(word.lower() in _SECRET_WORDS for word in _NAME_WORD.findall(name))


def is_secret_value(value: str) -> bool:
    """Whether ``value`` looks like a credential (``sk-...``, ``Bearer ...``, an AWS key id, a
    JWT, ``password=...``), or is a value registered as secret (alone or after a scheme word,
    as in ``Token <secret>``)."""
    if any(pattern.search(value) for pattern in _VALUE_PATTERNS):
        return True
    _scan_environment()
    words = value.strip().split()
    candidates = {value.strip(), words[-1]} if words else set()
    with _lock:
        return any(candidate in _secrets for candidate in candidates)


def _scan_environment() -> None:
    global _env_scanned
    if _env_scanned:
        return
    _env_scanned = True
    for name, value in os.environ.items():
        if _SECRET_ENV_NAME.search(name):
            register_secret(value)


def redact(text: str) -> str:
    """Return ``text`` with every known or credential-shaped secret replaced by ``***``."""
    if not text:
        return text
    _scan_environment()
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _PATTERNS[0].sub(MASK, text)
    text = _PATTERNS[1].sub(f"Bearer {MASK}", text)
    return _PATTERNS[2].sub(lambda m: m.group(1) + MASK, text)
