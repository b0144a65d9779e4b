"""Connecting to Ray: a local instance by default, or a running cluster.

``init()`` is idempotent: calling it again (from user code, a handle, a CLI command) reuses the
connection. It only ever puts non-secret variables into the job's runtime_env; API keys stay in
the environment of the processes that need them (decision 7 of the design). A runtime_env
variable that looks like a secret is refused unless the caller opts in (``allow_secret_env``):
Ray stores a job's runtime_env in its job table.
"""

from __future__ import annotations

import os
from typing import Any

from gecko_actors._redact import is_secret_setting
from gecko_actors.exceptions import UserError
from gecko_actors.logging import get_logger
from gecko_actors.settings import load_settings, prepare_offline_environment

DEFAULT_NAMESPACE = "gecko"
_log = get_logger("gecko_actors.runtime")
_dashboard_url: str | None = None


def init(
    address: str | None = None,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    num_cpus: int | None = None,
    runtime_env: dict[str, Any] | None = None,
    include_dashboard: bool | None = None,
    allow_secret_env: bool = False,
    **ray_kwargs: Any,
) -> dict[str, Any]:
    """Connect to Ray, starting a local instance when there is nowhere to connect to.

    Args:
        address: ``"auto"``, ``"ray://host:10001"`` or a GCS address to join a cluster; ``None``
            uses ``RAY_ADDRESS`` if set, else starts Ray in this process (the embedded default).
        namespace: the Ray namespace for every gecko_actors actor (names like ``agent/<name>``).
        num_cpus: CPUs of a local instance.
        runtime_env: the job's Ray runtime environment, if it needs one (none by default:
            workers of a job without one start from Ray's pool of pre-started processes,
            about a second sooner each on a small machine). Its ``env_vars`` must not hold
            secrets (by name, such as ``OPENAI_API_KEY``, or by shape, such as ``sk-...`` or
            a password in a URL); a credentials variable holding a file's path
            (``GOOGLE_APPLICATION_CREDENTIALS=/etc/sa.json``) is not a secret.
        include_dashboard: start the dashboard of a local instance (``ray list actors`` and
            ``ray.util.state`` need it); Ray's default when ``None``.
        allow_secret_env: ship secret-looking ``env_vars`` anyway (a warning is still logged).
        **ray_kwargs: passed to ``ray.init``.

    Returns:
        Facts about the connection: address, namespace, dashboard URL, whether it was new.

    Raises:
        UserError: a secret-looking variable is in ``runtime_env`` without
            ``allow_secret_env=True`` (checked before anything connects), or Ray is already
            connected in another namespace.
    """
    import ray

    env = dict(runtime_env or {})
    user_vars = dict(env.get("env_vars") or {})
    _check_secret_env(user_vars, allow=allow_secret_env)
    prepare_offline_environment()
    if ray.is_initialized():
        current = ray.get_runtime_context().namespace
        if current != namespace:
            raise UserError(
                f"Ray is already connected in namespace {current!r}, not {namespace!r}",
                hint="call gecko_actors.shutdown() first, or use the same namespace",
            )
        return _describe(ray, None, new=False)
    options: dict[str, Any] = {"namespace": namespace, **ray_kwargs}
    if env:  # workers set the variables litellm and tiktoken need offline themselves
        options["runtime_env"] = env
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        options["address"] = target
    else:
        # "local": never attach by accident to a cluster someone started on this machine.
        options["address"] = "local"
        options.setdefault("num_cpus", num_cpus)
        if include_dashboard is not None:
            options["include_dashboard"] = include_dashboard
    described = _describe(ray, ray.init(**options), new=True)
    if load_settings().warm_hosts:
        from gecko_actors.agents import placement
        from gecko_actors.workflow import hosting

        # The job's first workflow host and its agent hosts boot while the caller goes on.
        hosting.warm()
        placement.warm()
    return described


def _check_secret_env(env_vars: dict[str, Any], *, allow: bool) -> None:
    """Refuse (or, when allowed, warn about) runtime_env variables that look like secrets."""
    # The same rule as the log redaction's: a variable refused here is masked in logs too.
    names = [str(name) for name, value in env_vars.items() if is_secret_setting(str(name), value)]
    if not names:
        return
    if not allow:
        # Names only: the values are what must not be repeated anywhere.
        raise UserError(
            f"runtime_env variable(s) {', '.join(names)} look like secrets: Ray stores a job's "
            "runtime_env in its job table (shown by the dashboard and `ray job list`)",
            hint="export them in the nodes' environment before Ray starts and pass models "
            "their names (api_key_env=, extra_env=, headers_env=); to ship them anyway, "
            "pass allow_secret_env=True",
            variables=names,
        )
    for name in names:
        _log.warning(
            "a secret-looking variable is in runtime_env (allow_secret_env=True): Ray stores "
            "runtime_envs in its job table; prefer the nodes' environment",
            variable=name,
        )


def _describe(ray: Any, context: Any, *, new: bool) -> dict[str, Any]:
    global _dashboard_url
    if context is not None:
        _dashboard_url = getattr(context, "dashboard_url", None) or None
    runtime = ray.get_runtime_context()
    return {
        "address": runtime.gcs_address,
        "namespace": runtime.namespace,
        "dashboard_url": _dashboard_url,
        "new": new,
    }


def ensure_initialized() -> None:
    """Connect with the defaults unless already connected (handles call this)."""
    import ray

    if not ray.is_initialized():
        init()


def shutdown() -> None:
    """Disconnect from Ray (and stop a local instance this process started)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def namespace() -> str:
    import ray

    ensure_initialized()
    return ray.get_runtime_context().namespace
