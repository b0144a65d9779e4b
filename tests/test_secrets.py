"""Secrets that must not travel to Ray as values.

- A model's secret-bearing extras (``aws_secret_access_key``, an ``Authorization`` header, a
  ``Bearer ...`` value) are refused when the model is to be served on Ray; ``extra_env`` and
  ``headers_env`` pass them by environment-variable name, read inside the gateway at call time.
- The ``GECKO_API_KEY`` setting travels by name and is read where the gateway runs (its
  environment, or ``.env`` in its working directory).
- ``init()`` refuses secret-looking runtime_env variables unless the caller opts in.
- The review's follow-ups: ``ingest`` checks its embedder, a store URL or a Redis store holding
  a password never becomes an actor's argument, a password in a URL is a secret value, one
  rule for secret names holds everywhere (and no longer refuses ``prompt_cache_key`` and the
  like), and ``extra_env`` cannot name the header arguments.
- The second review: log masking finds every key shape and secret name that refusal finds
  (one list of shapes, one name rule), masks a value whole (``Authorization: Basic ...``, a
  private key through its END line, a URL password holding ``@``), in linear time; flags,
  ``PWD`` and JSON schemas with a ``token`` property are not secrets; no thread redacts before
  the environment scan has registered its secrets.

Most tests need no Ray. Two use the session's Ray: a canary read by name inside a gateway
reaches the (fake) provider but none of Ray's records of the actors (the creation task specs
the GCS keeps, the actor table, the session's log files); a secret value is refused before any
actor exists. One runs this file as a small program in a child process that starts its own
local Ray, because the ``GECKO_API_KEY`` setting must be in place before Ray starts (a Ray's
workers inherit the environment and working directory Ray was started with), which the
session's Ray, started long before, cannot show.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgpack
import pytest
import ray

import gecko_actors.gateway as gateway_module
import gecko_actors.ingestion as ingestion_module
import gecko_actors.memory as memory_module
from gecko_actors import (
    Agent,
    ConfigurationError,
    LanceVectorStore,
    LiteLLMModel,
    Memory,
    Message,
    ModelGateway,
    ScriptedModel,
    UserError,
)
from gecko_actors import _redact as redact_module
from gecko_actors import runtime as runtime_module
from gecko_actors._redact import MASK, is_secret_value, mask_url, redact, url_holds_secret
from gecko_actors.agents import directory as agent_directory
from gecko_actors.agents.dedicated import AgentSpec
from gecko_actors.checkpoint.location import parse_uri
from gecko_actors.core.calculator import calculator
from gecko_actors.core.embedders import LiteLLMEmbedder
from gecko_actors.core.secret_args import secret_leaves
from gecko_actors.gateway import embedding_gateway, gateway_label
from gecko_actors.ingestion import ingest
from gecko_actors.settings import settings_api_key
from gecko_actors.stores.redis_sessions import PASSWORD_ENV, RedisSessionStore
from gecko_actors.stores.registry import redact_url, session_store_from_url
from gecko_actors.testing import FakeLLMServer, FakeReply

NAMESPACE = "gecko"
# The canary read by name inside the session's gateways. Set when this module is imported,
# i.e. during collection, before the session's Ray starts: Ray's workers inherit it as they
# would a variable exported on a node. Its name does not look secret, so gecko_actors' own
# redaction (it masks the values of secret-named variables) cannot hide a leak from the scans.
CANARY_VARIABLE = "GECKO_TEST_TRAVEL_CANARY"
CANARY = os.environ.setdefault(CANARY_VARIABLE, "canary-" + uuid.uuid4().hex)
SCENARIO_TIMEOUT = 240


def secret() -> str:
    """A fresh value that nothing else contains."""
    return "value" + uuid.uuid4().hex


# --- a provider that shows the headers it received --------------------------------------------


class HeaderProxy:
    """A reverse proxy on 127.0.0.1 in front of a :class:`FakeLLMServer` that records every
    request's headers (the fake server records bodies; keys and headers travel in headers)."""

    def __init__(self, upstream: FakeLLMServer) -> None:
        self.upstream = upstream
        self.headers: list[dict[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.headers.append({k.lower(): v for k, v in self.headers.items()})
                status, content_type, payload = proxy.forward(self.path, body)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def forward(self, path: str, body: bytes) -> tuple[int, str, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.upstream.port, timeout=60)
        try:
            connection.request("POST", path, body, {"Content-Type": "application/json"})
            answer = connection.getresponse()
            return (
                answer.status,
                answer.getheader("Content-Type", "application/json"),
                answer.read(),
            )
        finally:
            connection.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def provider() -> Iterator[HeaderProxy]:
    with FakeLLMServer(handler=lambda body: FakeReply.text("pong")) as server:
        proxy = HeaderProxy(server)
        try:
            yield proxy
        finally:
            proxy.stop()


# --- what Ray keeps about an actor ------------------------------------------------------------


def creation_task(actor_name: str, namespace: str = NAMESPACE) -> Any:
    """The named actor's creation task spec as the GCS keeps it: the GCS re-runs this task to
    restart the actor (``max_restarts=-1``), so it holds the constructor arguments, inlined
    when small (Ray inlines arguments under 100 KB). Whatever Ray retains about an actor's
    arguments is here; the callers check that it is readable with a non-secret control value."""
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    channel = init_grpc_channel(ray.get_runtime_context().gcs_address)
    try:
        stub = gcs_service_pb2_grpc.ActorInfoGcsServiceStub(channel)
        request = gcs_service_pb2.GetNamedActorInfoRequest(name=actor_name, ray_namespace=namespace)
        reply = stub.GetNamedActorInfo(request, timeout=30)
    finally:
        channel.close()
    assert reply.status.code == 0, reply.status.message
    return reply.task_spec


def inlined_args(task_spec: Any) -> bytes:
    return b"".join(arg.data for arg in task_spec.args)


def actor_table() -> bytes:
    """Every actor's entry in the GCS actor table (names, runtime envs, death causes...)."""
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    channel = init_grpc_channel(ray.get_runtime_context().gcs_address)
    try:
        stub = gcs_service_pb2_grpc.ActorInfoGcsServiceStub(channel)
        return stub.GetAllActorInfo(
            gcs_service_pb2.GetAllActorInfoRequest(), timeout=30
        ).SerializeToString()
    finally:
        channel.close()


def log_files_containing(needle: str) -> list[str]:
    """The files under this Ray session's log folder (every worker's stdout and stderr, the
    GCS, raylet and runtime-env agents' logs) that contain ``needle``."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    found = []
    for path in logs.rglob("*"):
        try:
            if path.is_file() and needle.encode() in path.read_bytes():
                found.append(str(path.relative_to(logs)))
        except OSError:  # rotated away meanwhile
            continue
    return found


def kill_named(*actor_names: str) -> None:
    for actor_name in actor_names:
        try:
            ray.kill(ray.get_actor(actor_name, namespace=NAMESPACE), no_restart=True)
        except ValueError:
            continue


# --- secret values are refused before anything reaches Ray ------------------------------------


class ReachedRay(Exception):
    """Raised where gateway spawning would first touch Ray (see ``no_ray``)."""


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Gateway spawning stops where it would first touch Ray (connect, create an actor),
    with :class:`ReachedRay`; the returned list records each time it got there."""
    reached: list[str] = []

    def stop_here(*args: Any, **kwargs: Any) -> None:
        reached.append("ray")
        raise ReachedRay

    monkeypatch.setattr(gateway_module, "ensure_initialized", stop_here)
    monkeypatch.setattr(gateway_module, "create", stop_here)
    return reached


SECRET_EXTRAS = [
    pytest.param(lambda v: {"aws_secret_access_key": v}, "aws_secret_access_key", id="by-name"),
    pytest.param(lambda v: {"azure_ad_token": v}, "azure_ad_token", id="token"),
    pytest.param(
        lambda v: {"vertex_credentials": {"type": "service_account", "private_key": v}},
        "vertex_credentials",
        id="credentials-dict",
    ),
    pytest.param(
        lambda v: {"extra_headers": {"Authorization": f"Bearer {v}"}},
        "extra_headers['Authorization']",
        id="authorization-header",
    ),
    pytest.param(
        lambda v: {"extra_headers": {"X-Api-Key": v}}, "extra_headers['X-Api-Key']", id="key-header"
    ),
    pytest.param(
        lambda v: {"extra_headers": {"X-Custom": f"Bearer {v}"}},
        "extra_headers['X-Custom']",
        id="bearer-value",
    ),
    pytest.param(lambda v: {"user": f"sk-{v}"}, "user", id="sk-value"),
    pytest.param(lambda v: {"extra_body": {"api_key": v}}, "extra_body['api_key']", id="nested"),
    pytest.param(
        lambda v: {"api_base": f"https://me:{v}@proxy.invalid/v1"}, "api_base", id="url-password"
    ),
]


@pytest.mark.parametrize(("extras", "path"), SECRET_EXTRAS)
def test_secret_extras_are_refused_before_any_actor(
    no_ray: list[str], extras: Any, path: str
) -> None:
    value = secret()
    model = LiteLLMModel("openai/fake-model", **extras(value))
    with pytest.raises(UserError) as excinfo:
        ModelGateway.spawn(model)
    assert no_ray == []  # neither Ray nor an actor was touched
    err = excinfo.value
    assert path in err.message
    assert "actor table" in err.message
    assert "env" in (err.hint or "")  # how to pass it instead: by variable name
    clone = pickle.loads(pickle.dumps(err))
    for text in (str(err), repr(err), json.dumps(err.to_dict()), str(clone)):
        assert value not in text
    assert clone.message == err.message


def test_the_hint_names_the_way_for_each_kind_of_secret(no_ray: list[str]) -> None:
    model = LiteLLMModel(
        "openai/fake-model",
        aws_secret_access_key=secret(),
        extra_headers={"Authorization": f"Bearer {secret()}"},
    )
    with pytest.raises(UserError) as excinfo:
        ModelGateway.spawn(model)
    assert "extra_env={'argument': 'NAME'}" in excinfo.value.hint
    assert "headers_env={'Header': 'NAME'}" in excinfo.value.hint
    assert excinfo.value.arguments == ["aws_secret_access_key", "extra_headers['Authorization']"]


def test_an_embedder_with_a_secret_header_is_refused_before_any_actor(no_ray: list[str]) -> None:
    value = secret()
    embedder = LiteLLMEmbedder("openai/text-embedding-3-small", extra_headers={"X-Api-Key": value})
    with pytest.raises(UserError, match=r"extra_headers\['X-Api-Key'\]") as excinfo:
        embedding_gateway(embedder)
    assert no_ray == []
    assert value not in str(excinfo.value)


def test_ordinary_extras_still_go_to_the_gateway(no_ray: list[str]) -> None:
    model = LiteLLMModel(
        "openai/fake-model",
        top_p=0.5,
        seed=7,
        max_completion_tokens=20,
        use_token_cache=True,  # a flag under a secret-ish name carries nothing secret
        extra_headers={"X-Trace-Id": "trace-1234"},
        metadata={"purpose": "evaluation"},
    )
    assert model.secret_arguments() == []
    with pytest.raises(ReachedRay):
        ModelGateway.spawn(model)
    assert no_ray == ["ray"]  # it went on to Ray: nothing was refused


# --- extra_env and headers_env ----------------------------------------------------------------


async def test_named_secrets_are_read_at_call_time_and_values_still_work_in_process(
    provider: HeaderProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second, in_process = secret(), secret(), secret()
    model = LiteLLMModel(
        "openai/fake-model",
        api_base=provider.url,
        api_key_env="GECKO_TEST_KEY_VAR",
        headers_env={"X-Gecko-Auth": "GECKO_TEST_HEADER_VAR"},
        # A string argument litellm forwards to the OpenAI-compatible server's body.
        extra_env={"safety_identifier": "GECKO_TEST_USER_VAR"},
        extra_headers={"X-Api-Key": in_process},  # a value: fine in this process only
        num_retries=0,
    )
    monkeypatch.setenv("GECKO_TEST_KEY_VAR", first)
    monkeypatch.setenv("GECKO_TEST_HEADER_VAR", first)
    monkeypatch.setenv("GECKO_TEST_USER_VAR", first)
    assert (await model.complete([Message.user("one")])).message.text == "pong"
    for name in ("GECKO_TEST_KEY_VAR", "GECKO_TEST_HEADER_VAR", "GECKO_TEST_USER_VAR"):
        monkeypatch.setenv(name, second)
    assert (await model.complete([Message.user("two")])).message.text == "pong"

    sent = [(h["authorization"], h["x-gecko-auth"], h["x-api-key"]) for h in provider.headers]
    assert sent == [
        (f"Bearer {first}", first, in_process),
        (f"Bearer {second}", second, in_process),
    ]
    assert [r["safety_identifier"] for r in provider.upstream.requests] == [first, second]
    # The model keeps names, not the values it read; only the in-process value makes it
    # unfit for a gateway.
    held = pickle.dumps(model.config()) + repr(model).encode()
    assert first.encode() not in held and second.encode() not in held
    assert model.extra == {"extra_headers": {"X-Api-Key": in_process}}
    assert model.secret_arguments() == ["extra_headers['X-Api-Key']"]


async def test_a_rebuilt_model_reads_the_named_secrets_where_it_runs(
    provider: HeaderProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = secret()
    model = LiteLLMModel(
        "openai/fake-model",
        api_base=provider.url,
        api_key_env="GECKO_TEST_KEY_VAR",
        headers_env={"Authorization-Extra": "GECKO_TEST_HEADER_VAR"},
        num_retries=0,
    )
    model.check_shippable()  # names only: fit for a gateway
    config = model.config()
    assert config["headers_env"] == {"Authorization-Extra": "GECKO_TEST_HEADER_VAR"}
    # What a gateway does with the configuration it receives, in its own environment.
    monkeypatch.setenv("GECKO_TEST_KEY_VAR", value)
    monkeypatch.setenv("GECKO_TEST_HEADER_VAR", value)
    rebuilt = LiteLLMModel(**config)
    rebuilt.validate_environment()
    assert (await rebuilt.complete([Message.user("x")])).message.text == "pong"
    assert provider.headers[-1]["authorization-extra"] == value


def test_a_missing_named_variable_is_a_configuration_error_naming_it() -> None:
    model = LiteLLMModel(
        "openai/fake-model",
        api_key_env="PATH",
        headers_env={"X-Auth": "GECKO_TEST_SURELY_UNSET_HEADER"},
    )
    with pytest.raises(ConfigurationError, match="GECKO_TEST_SURELY_UNSET_HEADER"):
        model.validate_environment()
    embedder = LiteLLMEmbedder("openai/e", extra_env={"user": "GECKO_TEST_SURELY_UNSET_USER"})
    with pytest.raises(ConfigurationError, match="GECKO_TEST_SURELY_UNSET_USER"):
        embedder.validate_environment()


@pytest.mark.parametrize(
    ("make_kwargs", "expected"),
    [
        # The secret itself, pasted where its variable's name belongs.
        pytest.param(lambda v: {"headers_env": {"Authorization": v}}, "name of an env", id="value"),
        pytest.param(
            lambda v: {"extra_env": {"api_key": "MY_KEY"}}, "set 'api_key'", id="reserved"
        ),
        pytest.param(
            lambda v: {"extra_env": {"user": "MY_USER"}, "user": v}, "both as a value", id="twice"
        ),
        pytest.param(
            lambda v: {
                "headers_env": {"authorization": "AUTH"},
                "extra_headers": {"Authorization": v},
            },
            "both as a value",
            id="header-twice",
        ),
        pytest.param(lambda v: {"headers_env": "MY_AUTH"}, "must be a dict", id="not-a-dict"),
        pytest.param(
            lambda v: {"headers_env": {"Bad Header": "AUTH"}}, "invalid name", id="header"
        ),
    ],
)
def test_env_mappings_take_variable_names(make_kwargs: Any, expected: str) -> None:
    value = "Bearer sk-" + uuid.uuid4().hex
    kwargs = make_kwargs(value)
    with pytest.raises(UserError, match=expected) as excinfo:
        LiteLLMModel("openai/fake-model", **kwargs)
    assert value not in str(excinfo.value) and value not in repr(excinfo.value)
    with pytest.raises(UserError, match=expected):
        LiteLLMEmbedder("openai/e", **kwargs)


# --- the GECKO_API_KEY setting ----------------------------------------------------------------


@pytest.fixture
def no_gecko_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No GECKO_API_KEY in the environment and no .env: the test sets what it needs."""
    monkeypatch.delenv("GECKO_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


async def test_the_settings_key_travels_by_name(
    no_gecko_env: Path,
    no_ray: list[str],
    provider: HeaderProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = secret()
    monkeypatch.setenv("GECKO_API_KEY", key)
    model = LiteLLMModel("openai/fake-model", api_base=provider.url, num_retries=0)
    assert not model.holds_key_value
    config = model.config()
    assert config["api_key_env"] == "GECKO_API_KEY"
    assert key.encode() not in pickle.dumps(config)
    with pytest.raises(ReachedRay):  # not refused: it went on to start the gateway
        ModelGateway.spawn(model)
    # In this process the model uses the setting; a gateway reads the variable it names.
    assert (await model.complete([Message.user("x")])).message.text == "pong"
    assert (await LiteLLMModel(**config).complete([Message.user("y")])).message.text == "pong"
    assert [h["authorization"] for h in provider.headers] == [f"Bearer {key}"] * 2


async def test_a_gateway_reads_the_settings_key_from_dotenv_in_its_directory(
    no_gecko_env: Path, provider: HeaderProxy
) -> None:
    key = secret()
    model = LiteLLMModel(
        "openai/fake-model", api_base=provider.url, api_key_env="GECKO_API_KEY", num_retries=0
    )
    with pytest.raises(ConfigurationError, match="GECKO_API_KEY") as excinfo:
        model.validate_environment()
    assert ".env" in excinfo.value.hint
    (no_gecko_env / ".env").write_text(f"GECKO_API_KEY={key}\n")
    model.validate_environment()
    assert (await model.complete([Message.user("x")])).message.text == "pong"
    assert provider.headers[-1]["authorization"] == f"Bearer {key}"


# --- init() and runtime_env -------------------------------------------------------------------


@pytest.fixture
def fake_ray_init(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """``ray.init`` recorded instead of run, as if no Ray were connected yet."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **options: calls.append(options))
    monkeypatch.setattr(runtime_module, "_describe", lambda ray, context, new: {"new": new})
    return calls


class RecordingLog:
    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.warnings.append((event, fields))


@pytest.mark.parametrize(
    "env_vars",
    [
        pytest.param({"OPENAI_API_KEY": "VALUE"}, id="api-key"),
        pytest.param({"HF_TOKEN": "VALUE", "PYTHONPATH": "/opt/code"}, id="token"),
        pytest.param({"DB_PASSWORD": "VALUE"}, id="password"),
        pytest.param({"HELPER_SETTING": "sk-VALUE"}, id="key-shaped-value"),
    ],
)
def test_init_refuses_secret_looking_runtime_env(
    fake_ray_init: list[dict[str, Any]], env_vars: dict[str, str]
) -> None:
    value = secret()
    env_vars = {k: v.replace("VALUE", value) for k, v in env_vars.items()}
    (variable,) = [k for k in env_vars if k != "PYTHONPATH"]
    with pytest.raises(UserError) as excinfo:
        runtime_module.init(runtime_env={"env_vars": env_vars})
    assert fake_ray_init == []  # refused before Ray was asked for anything
    err = excinfo.value
    assert variable in err.message and "job table" in err.message
    assert "allow_secret_env=True" in err.hint
    for text in (str(err), repr(err), json.dumps(err.to_dict())):
        assert value not in text


def test_init_ships_secret_env_only_when_allowed_and_still_warns(
    fake_ray_init: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = RecordingLog()
    monkeypatch.setattr(runtime_module, "_log", log)
    value = secret()
    ordinary = {"PYTHONPATH": "/opt/code", "GECKO_MAX_TOKENS": "50", "TIKTOKEN_CACHE_DIR": "/t"}
    runtime_module.init(runtime_env={"env_vars": ordinary})
    assert log.warnings == []
    runtime_module.init(
        runtime_env={"env_vars": {**ordinary, "OPENAI_API_KEY": value}}, allow_secret_env=True
    )
    ordinary_call, allowed_call = fake_ray_init
    assert "allow_secret_env" not in allowed_call  # ours, not a ray.init option
    assert allowed_call["runtime_env"]["env_vars"]["OPENAI_API_KEY"] == value
    assert ordinary_call["runtime_env"]["env_vars"].items() >= ordinary.items()
    assert [fields["variable"] for _, fields in log.warnings] == ["OPENAI_API_KEY"]
    assert value not in repr(log.warnings)


# --- on Ray -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("ray_session")
def test_named_secrets_reach_the_provider_but_no_record_of_ray(provider: HeaderProxy) -> None:
    model = LiteLLMModel(
        "openai/fake-model",
        api_base=provider.url,
        api_key_env=CANARY_VARIABLE,
        headers_env={"X-Gecko-Canary": CANARY_VARIABLE},
        extra_env={"safety_identifier": CANARY_VARIABLE},  # forwarded in the body
        num_retries=0,
        timeout=60,
    )
    name = f"canary-{uuid.uuid4().hex[:8]}"
    hosted = f"canary-hosted-{uuid.uuid4().hex[:8]}"
    gateway = f"gateway/{gateway_label(model)}/0"
    try:
        assert Agent.spawn(name, model=model, dedicated=True).run("hello").content == "pong"
        assert Agent.spawn(hosted, model=model).run("hello").content == "pong"
        # A hosted agent's spec is kept in the cluster's key-value store, as data (nothing
        # pickled): names only there too.
        entry = agent_directory.find(hosted)
        kept = msgpack.packb(entry.data)
        assert entry.code == b""
        assert gateway_label(model).encode() in kept and CANARY.encode() not in kept
        # The canary was read inside the gateway and reached the provider...
        assert provider.headers[-1]["authorization"] == f"Bearer {CANARY}"
        assert provider.headers[-1]["x-gecko-canary"] == CANARY
        assert provider.upstream.requests[-1]["safety_identifier"] == CANARY
        # ...while the actors' creation tasks, which hold their constructor arguments (the
        # controls prove they are inlined and readable), carry only the variable's name.
        for actor, control in ((gateway, provider.url), (f"agent/{name}", gateway_label(model))):
            spec = creation_task(actor)
            assert control.encode() in inlined_args(spec), actor
            assert CANARY.encode() not in spec.SerializeToString(), actor
        assert CANARY_VARIABLE.encode() in inlined_args(creation_task(gateway))
        assert CANARY.encode() not in actor_table()
        assert log_files_containing(CANARY) == []
    finally:
        for agent in set(Agent.list()) & {hosted, name}:
            Agent.get(agent).kill()
        kill_named(gateway)


@pytest.mark.usefixtures("ray_session")
def test_a_secret_value_is_refused_before_any_actor_on_ray() -> None:
    value = secret()
    model = LiteLLMModel(
        "openai/fake-model",
        api_base="http://127.0.0.1:9/v1",
        api_key_env="PATH",
        extra_headers={"Authorization": f"Bearer {value}"},
    )
    name = f"refused-{uuid.uuid4().hex[:8]}"
    label = gateway_label(model)
    try:
        # Tools of its own: their toolbox actor would be made first, and be left behind.
        with pytest.raises(UserError) as excinfo:
            Agent.spawn(name, model=model, tools=[calculator])
        assert "extra_headers['Authorization']" in str(excinfo.value)
        assert "headers_env" in str(excinfo.value)
        assert value not in str(excinfo.value)
        # Nor a session store holding a password (it would travel in the agent's spec).
        store = RedisSessionStore("127.0.0.1", 6379, password=value)
        with pytest.raises(UserError) as excinfo:
            Agent.spawn(name, model=ScriptedModel(["x"]), tools=[calculator], session_store=store)
        assert PASSWORD_ENV in excinfo.value.hint and value not in str(excinfo.value)
        named = ray.util.list_named_actors()
        assert f"agent/{name}" not in named and f"toolbox/{name}/0" not in named
        assert not [n for n in named if n.startswith(f"gateway/{label}/")]
    finally:
        kill_named(f"agent/{name}", f"gateway/{label}/0", f"toolbox/{name}/0")


# --- review follow-ups: what still leaked, and what was refused for nothing -------------------


def test_ingest_refuses_an_embedder_holding_a_secret_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Before: the embedder went straight into every EmbedderActor's constructor arguments.
    reached: list[str] = []

    def stop_here(*args: Any, **kwargs: Any) -> None:
        reached.append("ray")
        raise ReachedRay

    monkeypatch.setattr(ingestion_module, "ensure_initialized", stop_here)
    (tmp_path / "doc.txt").write_text("some text")
    value = secret()
    embedder = LiteLLMEmbedder(
        "openai/text-embedding-3-small", extra_headers={"Authorization": f"Bearer sk-{value}"}
    )
    for kwargs in (
        {"store": LanceVectorStore(tmp_path / "given"), "embedder": embedder},
        {"store": LanceVectorStore(tmp_path / "own", embedder=embedder)},  # the store's own
    ):
        with pytest.raises(UserError, match=r"extra_headers\['Authorization'\]") as excinfo:
            ingest(tmp_path / "doc.txt", **kwargs)
        assert "headers_env" in excinfo.value.hint
        assert value not in str(excinfo.value)
    assert reached == []
    # A shippable embedder goes on to Ray.
    with pytest.raises(ReachedRay):
        ingest(tmp_path / "doc.txt", store=LanceVectorStore(tmp_path / "plain"))


@pytest.fixture
def memory_actors(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """``Memory.spawn`` records the memory actor it would create instead of creating it."""
    created: list[tuple[Any, ...]] = []

    def record(actor_cls: Any, actor_name: str, args: tuple[Any, ...], **options: Any) -> str:
        created.append(args)
        return "handle"

    monkeypatch.setattr(memory_module, "create", record)
    return created


@pytest.mark.parametrize("given", ["sessions", "setting"])
@pytest.mark.parametrize(
    "url",
    [
        "redis://:{pw}@127.0.0.1:6379/0",
        "rediss://reader:{pw}@127.0.0.1:6379/2?ttl=60",
        "redis://user:pa/{pw}@[::1]:6379/0",  # an unescaped '/' in the password
    ],
)
def test_a_store_url_with_a_password_never_becomes_a_memory_actor_argument(
    memory_actors: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch, url: str, given: str
) -> None:
    password = secret()
    url = url.format(pw=password)
    if given == "setting":
        monkeypatch.setenv("GECKO_STORAGE_URL", url)
        kwargs: dict[str, Any] = {}
    else:
        kwargs = {"sessions": url}
    with pytest.raises(UserError) as excinfo:
        Memory.spawn("pw-test", **kwargs)
    assert memory_actors == []
    err = excinfo.value
    assert ("GECKO_STORAGE_URL" if given == "setting" else "sessions=") in err.message
    assert "actor table" in err.message and PASSWORD_ENV in err.hint
    for text in (err.message, err.hint, str(err.context), str(pickle.loads(pickle.dumps(err)))):
        assert password not in text
    # Without the password (an ACL user may stay), the memory actor is created.
    Memory.spawn("no-pw", sessions="redis://alice@127.0.0.1:6379/0?ttl=60")
    assert [args[1] for args in memory_actors] == ["redis://alice@127.0.0.1:6379/0?ttl=60"]


def test_a_redis_store_holding_a_password_is_refused_when_it_would_leave_the_process() -> None:
    password = secret()
    store = session_store_from_url(f"redis://:{password}@127.0.0.1:6379/0")
    spec = AgentSpec(name="a", model=None, session_store=store)
    # pickle is how Ray ships a constructor's arguments (an AgentSpec holds the store).
    for dump in (lambda: pickle.dumps(store), lambda: ray.cloudpickle.dumps(spec)):
        with pytest.raises(UserError) as excinfo:
            dump()
        assert PASSWORD_ENV in excinfo.value.hint
        assert password not in str(excinfo.value) and password not in excinfo.value.message
    with pytest.raises(UserError):
        store.check_shippable()
    # In this process it is still a store that knows its password.
    assert copy.deepcopy(store)._password == password
    without = RedisSessionStore("127.0.0.1", 6379, username="alice")
    without.check_shippable()
    assert pickle.loads(pickle.dumps(without)).username == "alice"


def test_a_password_in_a_url_is_a_secret_value() -> None:
    password = "hunter2pass"
    database_url = f"postgres://u:{password}@db/x"
    # In a runtime_env variable whose name says nothing...
    with pytest.raises(UserError, match="DATABASE_URL"):
        runtime_module._check_secret_env({"DATABASE_URL": database_url}, allow=False)
    # ...in a model's extras...
    model = LiteLLMModel(
        "openai/fake-model", extra_body={"webhook": f"https://bob:{password}@hooks/x"}
    )
    assert model.secret_arguments() == ["extra_body['webhook']"]
    with pytest.raises(UserError):
        model.check_shippable()
    # ...and in a log line, masked with the user and host kept.
    assert redact(f"connect {database_url} failed") == "connect postgres://u:***@db/x failed"
    # A URL without a password is none.
    assert not is_secret_value("https://alice@hooks.example/x?page=2")
    assert not is_secret_value("https://hooks.example:8443/x")


PROVIDER_KEYS = [
    "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z" * 4,
    "sk-ant-api03-" + "x7Yz_Q2w-E5r" * 8 + "AA",
    "sk-" + "0123456789abcdef" * 3,
]


def test_key_shaped_values_need_a_random_looking_tail() -> None:
    # Before: any "rk-" or "sk-" followed by 8 characters was a key, so a batch label was
    # refused on Ray; real keys must still be caught.
    for key in PROVIDER_KEYS:
        assert is_secret_value(key), key
        assert LiteLLMModel("openai/fake-model", user=key).secret_arguments() == ["user"]
    for label in ("rk-2024-nightly-batch", "sk-learn-pipeline-v2", "pk-abcdefghijklmnopqrstuv"):
        assert not is_secret_value(label), label
        assert LiteLLMModel("openai/fake-model", user=label).secret_arguments() == []


def test_legitimate_arguments_are_not_refused(no_ray: list[str]) -> None:
    # Before: each of these was refused on Ray, by its name or by the shape of its value.
    model = LiteLLMModel(
        "openai/fake-model",
        prompt_cache_key="tenant-42",  # a real OpenAI parameter
        idempotency_key="run-7",
        token_budget=5000,
        pass_through="all",
        vertex_credentials="/etc/gcp/sa.json",  # a path to the credentials, not them
        extra_body={"run": "rk-2024-nightly-batch"},
        extra_headers={"Idempotency-Key": "run-7"},
    )
    assert model.secret_arguments() == []
    with pytest.raises(ReachedRay):
        ModelGateway.spawn(model)
    assert no_ray == ["ray"]


def test_a_credentials_path_in_runtime_env_is_shipped_and_not_masked(
    fake_ray_init: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    env_vars = {"GOOGLE_APPLICATION_CREDENTIALS": "/etc/gcp/sa.json", "RUN": "rk-2024-nightly"}
    runtime_module.init(runtime_env={"env_vars": env_vars})
    (call,) = fake_ray_init
    assert call["runtime_env"]["env_vars"].items() >= env_vars.items()
    # The environment scan agrees: the path is not masked in logs; JSON credentials would be.
    monkeypatch.setattr(redact_module, "_env_scanned", False)
    monkeypatch.setattr(redact_module, "_secrets", set(redact_module._secrets))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/etc/gcp/sa.json")
    assert redact("reading /etc/gcp/sa.json") == "reading /etc/gcp/sa.json"
    with pytest.raises(UserError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        runtime_module._check_secret_env(
            {"GOOGLE_APPLICATION_CREDENTIALS": '{"type": "service_account"}'}, allow=False
        )


def test_a_variable_refused_in_runtime_env_is_masked_in_logs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before: DB_PASS was refused in runtime_env but its value was not masked in logs.
    value = secret()
    with pytest.raises(UserError, match="DB_PASS"):
        runtime_module._check_secret_env({"DB_PASS": value}, allow=False)
    monkeypatch.setattr(redact_module, "_env_scanned", False)
    monkeypatch.setattr(redact_module, "_secrets", set(redact_module._secrets))
    monkeypatch.setenv("DB_PASS", value)
    assert redact(f"login with {value}") == "login with ***"


SECRET_NAMES = [
    "api_key",
    "x-api-key",
    "DB_PASS",
    "sig",
    # Found missing in the second review:
    "passwd",
    "Ocp-Apim-Subscription-Key",
    "AccountKey",
    "AWS_BEARER_TOKEN_BEDROCK",
    "AZURE_STORAGE_CONNECTION_STRING",
    "SENTRY_DSN",
    "DOCKER_AUTH_CONFIG",
    "GECKO_CHECKPOINT_OLD_KEYS",
]
ORDINARY_NAMES = [
    "prompt_cache_key",
    "token_budget",
    "pass_through",
    "aws_access_key_id",
    "routing_key",
    "public_key",
]


@pytest.mark.parametrize("name", SECRET_NAMES + ORDINARY_NAMES)
def test_every_place_agrees_on_which_names_are_secret(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, four definitions disagreed: e.g. a checkpoint URI took ?api_key= for an unknown
    # option, a store URL masked ?token_budget=, runtime_env let DB_PASS through its names.
    # After the first review a log line still masked only a fixed list (not passwd=,
    # AccountKey=...), and none of the places knew the Bedrock, Azure, Sentry or Docker names.
    expected = name in SECRET_NAMES
    value = "v" + uuid.uuid4().hex  # shaped like nothing
    places = {}
    places["model extras"] = bool(list(secret_leaves({name: value})))
    variable = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", name).upper().replace("-", "_")
    try:
        runtime_module._check_secret_env({variable: value}, allow=False)
        places["runtime_env"] = False
    except UserError:
        places["runtime_env"] = True
    places["store URL masking"] = value not in redact_url(f"redis://host/0?{name}={value}")
    try:
        parse_uri(f"s3://bucket/runs?{name}={value}")
        places["checkpoint URI"] = False
    except UserError as exc:
        places["checkpoint URI"] = "carries credentials" in exc.message
        assert value not in exc.message
    places["log line"] = value not in redact(f"sent {name}={value} and {name}: {value}")
    monkeypatch.setattr(redact_module, "_secrets", set(redact_module._secrets))
    monkeypatch.setattr(redact_module, "_env_scanned", False)
    monkeypatch.setenv(variable, value)
    places["environment scan"] = value not in redact(f"saw {value}")
    assert places == dict.fromkeys(places, expected)


def test_extra_env_cannot_name_the_header_arguments() -> None:
    # Before: accepted, then a ValueError at call time when headers_env merged its headers
    # into the string read for extra_headers.
    for kwargs in (
        {"extra_env": {"extra_headers": "MY_HEADERS"}, "headers_env": {"X-Auth": "MY_AUTH"}},
        {"extra_env": {"headers": "MY_HEADERS"}},
    ):
        for build in (LiteLLMModel, LiteLLMEmbedder):
            with pytest.raises(UserError, match="extra_env cannot set") as excinfo:
                build("openai/fake-model", **kwargs)
            assert "headers_env" in excinfo.value.hint


# --- the second review: log masking and secret detection agree ------------------------------


@pytest.fixture
def fresh_redaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets registered by the test stay in it, and the environment is scanned again."""
    monkeypatch.setattr(redact_module, "_secrets", set(redact_module._secrets))
    monkeypatch.setattr(redact_module, "_env_scanned", False)


def fake_key(prefix: str, length: int = 36) -> str:
    """A random-looking key after ``prefix``, made at run time (no key-shaped literal in the
    repository for secret scanners to flag)."""
    tail = (uuid.uuid4().hex + uuid.uuid4().hex.upper() + uuid.uuid4().hex)[:length]
    return prefix + tail


PRIVATE_KEY = "\n".join(
    [
        "-----BEGIN " + "PRIVATE KEY-----",
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7" + uuid.uuid4().hex,
        "bodyline2" + uuid.uuid4().hex,
        "-----END " + "PRIVATE KEY-----",
    ]
)
# Each key shape is_secret_value knows, with the part that must not survive redact().
KEY_SHAPES = {
    "AWS access key id": "AKIA" + "IOSFODNN7" + "EXAMPLE",
    "GitHub token": fake_key("gh" + "p_"),
    "GitHub fine-grained token": fake_key("github" + "_pat_", 82),
    "GitLab token": fake_key("gl" + "pat-", 20),
    "Slack token": "xo" + "xb-" + "123456789012-" + uuid.uuid4().hex,
    "Google API key": fake_key("AI" + "za", 35),
    "JWT": "ey" + "JhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0." + uuid.uuid4().hex,
    "Hugging Face token": fake_key("h" + "f_", 34),
    "Stripe secret key": fake_key("sk" + "_live_", 24),
    "Stripe restricted key": fake_key("rk" + "_live_", 24),
    "Groq key": fake_key("gs" + "k_", 52),
    "xAI key": fake_key("xa" + "i-", 80),
    "Bedrock API key": fake_key("AB" + "SKQmVkcm9ja0FQSUtleS1", 60),
    "PEM private key": PRIVATE_KEY,
}


@pytest.mark.parametrize("kind", KEY_SHAPES)
@pytest.mark.usefixtures("fresh_redaction")
def test_redact_masks_every_key_shape_that_is_refused(kind: str) -> None:
    # Before: redact() knew only sk-..., Bearer, URL passwords and a few key=value names, so
    # a GitHub token or a JWT in a log line went out whole; and is_secret_value() did not know
    # github_pat_, glpat-, hf_, sk_live_, gsk_, xai- or ABSK keys at all.
    key = KEY_SHAPES[kind]
    assert is_secret_value(key)
    for text, kept in (
        (f"calling with {key} now", ("calling with ", " now")),
        (f"GET /v1/models?key={key}&alt=json", ("GET /v1/models?key=", "&alt=json")),
        (json.dumps({"header": key, "n": 1}), ('"n": 1',)),
    ):
        masked = redact(text)
        assert MASK in masked
        assert all(part not in masked for part in key.splitlines() if len(part) > 6), masked
        assert all(part in masked for part in kept), masked


@pytest.mark.usefixtures("fresh_redaction")
def test_a_private_key_is_masked_through_its_end_line() -> None:
    # Before: not masked at all; a mask of the BEGIN line alone would leave the body.
    body = PRIVATE_KEY.splitlines()[1:-1]
    assert redact(f"key:\n{PRIVATE_KEY}\nloaded") == "key:\n***\nloaded"
    # In a JSON line the newlines are escaped: still one block, and the line stays JSON.
    line = json.dumps({"event": "loaded", "private_key": PRIVATE_KEY + "\n", "n": 1})
    record = json.loads(redact(line))
    assert record["private_key"] in (MASK, MASK + "\n")
    assert record["event"] == "loaded" and record["n"] == 1
    # Cut short (no END line): masked to the closing quote, not beyond.
    cut = json.dumps({"private_key": "\n".join(PRIVATE_KEY.splitlines()[:2]), "n": 2})
    record = json.loads(redact(cut))
    assert record == {"private_key": MASK, "n": 2}
    assert not any(part in redact(cut) for part in body)


ALL_OF_THE_VALUE = [
    # (text, expected): the whole value goes, spaces and all, to the end of the line or the
    # closing quote; the rest of the text stays.
    (str({"Authorization": "Basic dXNlcjpwYXNzd29yZA=="}), "{'Authorization': '***'}"),
    ("Authorization: Token 9f8e7d6c5b4a3f2e1d0c\nnext line", "Authorization: ***\nnext line"),
    (
        "Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/"
        "aws4_request, SignedHeaders=host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6",
        "Authorization: ***",
    ),
    ("Cookie: session=abc123def; theme=dark\nHost: x", "Cookie: ***\nHost: x"),
    ("Set-Cookie: sid=abc123def; Path=/; HttpOnly", "Set-Cookie: ***"),
    ("login passwd=hunter22 user=bob", "login passwd=*** user=bob"),
    (
        "run --pwd=hunter22 --password=hunter23 --user bob",
        "run --pwd=*** --password=*** --user bob",
    ),
    ("Ocp-Apim-Subscription-Key: 0123456789abcdef0123", "Ocp-Apim-Subscription-Key: ***"),
    (
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0a2V5MTIz==",
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=***",
    ),
    (
        "GET https://acct.blob.core.windows.net/c/b?sv=2022-11-02&sig=abcDEF123%2Bxyz&se=2030",
        "GET https://acct.blob.core.windows.net/c/b?sv=2022-11-02&sig=***&se=2030",
    ),
    ("config password = 'correct horse battery' done", "config password = '***' done"),
]


@pytest.mark.parametrize(("text", "expected"), ALL_OF_THE_VALUE)
@pytest.mark.usefixtures("fresh_redaction")
def test_secret_named_pairs_are_masked_whole(text: str, expected: str) -> None:
    # Before: a fixed list of names, and the value stopped at the first space, so
    # "Authorization: Basic <base64>" showed the base64 and Cookie/passwd/pwd/AccountKey/sig
    # were not masked at all.
    assert redact(text) == expected


@pytest.mark.usefixtures("fresh_redaction")
def test_masking_keeps_a_json_line_valid() -> None:
    inner = json.dumps({"Authorization": "Basic dXNlcjpwYXNzd29yZA==", "n": 1})
    line = json.dumps(
        {
            "event": f"sent {inner} with Cookie: sid=abc123def; x=1",
            "note": "missing token:",
            "token": 'ab"c\\',
            "level": "info",
        }
    )
    masked = redact(line)
    record = json.loads(masked)  # still one valid JSON object
    assert "dXNlcjpwYXNzd29yZA" not in masked and "abc123def" not in masked
    assert record["event"] == 'sent {"Authorization": "***", "n": 1} with Cookie: ***'
    assert record["note"] == "missing token:"  # the field's own closing quote is no value
    assert record["token"] == MASK
    assert record["level"] == "info"


@pytest.mark.usefixtures("fresh_redaction")
def test_url_passwords_are_masked_whole() -> None:
    # Before: "p@ss" showed "ss" (the mask stopped at the first "@"), and a password over 256
    # characters was not matched at all, neither masked nor refused.
    assert redact("connect postgres://user:p@ss@db/x failed") == (
        "connect postgres://user:***@db/x failed"
    )
    long_password = "p" + "Xy9" * 100
    url = f"postgres://user:{long_password}@db/x"
    assert redact(f"connect {url} failed") == "connect postgres://user:***@db/x failed"
    assert is_secret_value(url)
    assert url_holds_secret(url)
    # An "@" after a path is no user information: left as it is.
    for text in ("see https://mastodon.social/@alice", "https://h.example/c?email=a@b.example"):
        assert redact(text) == text
        assert not is_secret_value(text)


ADVERSARIAL_PREFIXES = [
    "eyJ-",  # quadratic before: 100 KB took 3.8 s, 200 KB 15 s, per call
    "eyJab-",
    "eyJhbGciOiJ-",
    "eyJaaaaaaaaa.",
    "sk-",
    "sk_live_",
    "ghp_",
    "xoxb-",
    "AIza",
    "ABSK",
    "Bearer ",
    "Basic ",
    "://a:",
    "a://b:c@d ",
    "@",
    "-----BEGIN ",
    "-----BEGIN PRIVATE KEY-----'",
    "api_key=",
    '"api_key": "',
    "Authorization: ",
    "--password=",
    "a-",
    "a:",
    '\\"',
]


@pytest.mark.timeout(30)
def test_adversarial_inputs_take_linear_time() -> None:
    # A pattern that can start at every repetition of its prefix and scan to the end of the
    # text is quadratic: each of these 200 KB inputs then takes seconds to minutes. Linear
    # patterns take milliseconds each, so the whole test ends far inside its timeout.
    for prefix in ADVERSARIAL_PREFIXES:
        text = prefix * (200_000 // len(prefix))
        redact(text)
        is_secret_value(text)
        mask_url(text)
        url_holds_secret(text)


def test_more_secret_shapes_and_names_are_refused_on_ray() -> None:
    # Before: each of these models went to the gateway actor's arguments.
    bedrock = fake_key("AB" + "SKQmVkcm9ja0FQSUtleS1", 60)
    for extras in (
        {"extra_headers": {"X-Bedrock": bedrock}},
        {"extra_body": {"hub_token": fake_key("h" + "f_", 34)}},
        {"extra_body": {"AZURE_STORAGE_CONNECTION_STRING": "AccountName=a;AccountKey=" + secret()}},
        {"extra_body": {"sentry_dsn": "https://" + secret() + "@o0.ingest.example/1"}},
        {"extra_body": {"auth": {"token": secret()}}},  # a dict is searched, not skipped
        {"extra_headers": {"Cookie": ["sid=" + secret(), "x=" + secret()]}},
    ):
        model = LiteLLMModel("openai/fake-model", **extras)
        assert model.secret_arguments(), extras
        with pytest.raises(UserError):
            model.check_shippable()


SCHEMA = {
    "type": "object",
    "properties": {
        "token": {"type": "string", "description": "The token to look up"},
        "api_key": {"type": "string"},
        "password": {"type": "string", "minLength": 12},
        "auth": {"type": "object", "properties": {"mode": {"enum": ["basic", "oauth"]}}},
    },
    "required": ["token", "password"],
}


def test_secret_named_properties_of_a_schema_are_not_refused(no_ray: list[str]) -> None:
    # Before: a property named token, api_key, password or auth held a dict, and a dict under
    # a secret name was flagged whole, so the model was refused on Ray.
    model = LiteLLMModel(
        "openai/fake-model",
        extra_body={
            "response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}],
            "guided_json": SCHEMA,
            "use_auth_token": "false",
        },
    )
    assert model.secret_arguments() == []
    with pytest.raises(ReachedRay):
        ModelGateway.spawn(model)
    assert no_ray == ["ray"]


@pytest.mark.usefixtures("fresh_redaction")
def test_flags_and_the_shells_directory_are_not_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before: runtime_env refused PWD and OLDPWD (only the environment scan exempted them)
    # and HF_HUB_DISABLE_IMPLICIT_TOKEN=1; routing_key and public_key were secret names.
    monkeypatch.setenv("PWD", "/home/me/project-dir")
    monkeypatch.setenv("DB_PWD", "hunter2-pwd-value")
    runtime_module._check_secret_env(
        {
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
            "USE_AUTH_TOKEN": "false",
            "PWD": "/home/me/project",
            "OLDPWD": "/home/me",
            "ROUTING_KEY": "orders.eu",
            "PUBLIC_KEY": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDAN",
        },
        allow=False,
    )
    # The same rule in the environment scan; a password-looking pwd is still one.
    text = "in /home/me/project-dir with hunter2-pwd-value"
    assert redact(text) == "in /home/me/project-dir with ***"
    with pytest.raises(UserError, match="DB_PWD"):
        runtime_module._check_secret_env({"DB_PWD": "hunter2-pwd-value"}, allow=False)


def test_a_bearer_token_needs_a_token_shaped_tail() -> None:
    # Before: any 8 letters after "Bearer" made a secret, so an error message quoted in a
    # model's extras was refused.
    for prose in ("Bearer authentication is required", "bearer tokens expire", "Basic usernames"):
        assert not is_secret_value(prose), prose
        assert LiteLLMModel("openai/fake-model", user=prose).secret_arguments() == []
    for token in ("Bearer 9f8e7d6c5b4a", "Bearer abc.DEF-ghi_jkl", "Basic dXNlcjpwYXNzd29yZA=="):
        assert is_secret_value(token), token


class WatchedLock:
    """A lock that tells when a thread other than the one that made it asks for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner = threading.current_thread()
        self.asked = threading.Event()

    def __enter__(self) -> bool:
        if threading.current_thread() is not self._owner:
            self.asked.set()
        return self._lock.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.__exit__(*exc_info)


def test_no_thread_redacts_before_the_environment_scan_has_registered_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before: the scan set its done-flag first and registered afterwards, so a thread
    # redacting in between found the flag set, skipped the scan, and let the secret through.
    value = secret()
    monkeypatch.setattr(redact_module, "_secrets", set())
    monkeypatch.setattr(redact_module, "_env_scanned", False)
    scan_lock = WatchedLock()
    monkeypatch.setattr(redact_module, "_scan_lock", scan_lock, raising=False)
    monkeypatch.setenv("RACE_API_KEY", value)
    register = redact_module.register_secret
    others: list[threading.Thread] = []
    seen: list[str] = []

    def register_while_another_thread_redacts(secret_value: str | None) -> None:
        if not others:  # the scan is under way and has registered nothing yet
            other = threading.Thread(target=lambda: seen.append(redact(f"other {value}")))
            others.append(other)
            other.start()
            # Go on once the other thread waits for the scan, or has finished without it.
            while not scan_lock.asked.wait(0.01) and other.is_alive():
                pass
        register(secret_value)

    monkeypatch.setattr(redact_module, "register_secret", register_while_another_thread_redacts)
    assert redact(f"first {value}") == "first ***"
    others[0].join(timeout=30)
    assert seen == ["other ***"]


# --- the GECKO_API_KEY setting on a Ray started where it is set -------------------------------


@pytest.mark.slow
def test_the_settings_key_works_on_ray(tmp_path: Path, provider: HeaderProxy) -> None:
    # The key is in the driver's .env only, the harder case: a worker finds it neither in the
    # task's arguments nor in its environment, and reads it by name from .env in its working
    # directory (the environment-variable path is the same read_key, tested without Ray).
    key = secret()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "GECKO_API_KEY")}
    (tmp_path / ".env").write_text(f"GECKO_API_KEY={key}\n")
    done = subprocess.run(
        [sys.executable, __file__, "settings-key", provider.url],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCENARIO_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["content"] == "pong"
    assert provider.headers[-1]["authorization"] == f"Bearer {key}"
    assert result["args_hold_control"] and result["args_hold_variable"]
    assert not result["spec_holds_key"]
    assert not result["actor_table_holds_key"]
    assert result["logs_holding_key"] == []


def _settings_key_scenario(api_base: str) -> dict[str, Any]:
    """The child program: start a local Ray here, spawn an agent whose model's key comes from
    the GECKO_API_KEY setting, call it once, and report what Ray recorded."""
    import gecko_actors as ga

    temp_dir = os.path.realpath(tempfile.mkdtemp(prefix="gecko-ray-"))  # short: unix sockets
    try:
        ga.init(num_cpus=1, include_dashboard=False, _temp_dir=temp_dir)
        try:
            model = LiteLLMModel("openai/fake-model", api_base=api_base, num_retries=0, timeout=60)
            content = Agent.spawn("settings-key", model=model).run("hello").content
            key = (settings_api_key() or "").encode()
            assert key, "the scenario needs GECKO_API_KEY"
            spec = creation_task(f"gateway/{gateway_label(model)}/0")
            return {
                "content": content,
                "args_hold_control": api_base.encode() in inlined_args(spec),
                "args_hold_variable": b"GECKO_API_KEY" in inlined_args(spec),
                "spec_holds_key": key in spec.SerializeToString(),
                "actor_table_holds_key": key in actor_table(),
                "logs_holding_key": log_files_containing(key.decode()),
            }
        finally:
            ga.shutdown()
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__" and sys.argv[1:2] == ["settings-key"]:
    print("RESULT " + json.dumps(_settings_key_scenario(sys.argv[2])), flush=True)
