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
