"""An agent's spec, and its form as plain data.

A spec is everything a process needs to (re)build an agent. Where every part of it is data, it
is recorded as msgpack data (:func:`to_data`), which any process reads without running code
and :func:`from_data` turns back into a spec:

- the model: a LiteLLM model served by a gateway, as the gateway's names and the model's
  configuration (secrets as environment-variable names only), so that a host re-creates the
  gateway if it is gone; or a :class:`ScriptedModel` whose replies are text or a
  module-level function;
- tools and hooks: module-level functions (or ``@tool`` objects), as ``module:attr``, with
  their options; a :class:`RemoteToolBox` by its actor names;
- the prompt, its variables, the engine options (msgpack-able values) and the budget;
- the session store: a store shared by URL, or a memory actor by name.

A part that is live code (a lambda, a closure, a function of the script being run, a model
or store object of your own) raises :class:`LiveCode`, naming it: such a spec travels
pickled inside the cluster and does not outlive it.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import msgpack
import ray

from gecko_actors._actors.gateway import GatewayModel
from gecko_actors._actors.memory import RemoteSessionStore
from gecko_actors._actors.toolbox import MeteredToolBox
from gecko_actors.core.budget import Budget
from gecko_actors.core.engine import Hooks
from gecko_actors.core.memory import TokenMemory
from gecko_actors.core.prompt import PromptTemplate
from gecko_actors.core.scripted import ScriptedModel
from gecko_actors.core.sessions import SessionStore
from gecko_actors.core.toolbox import ToolBox
from gecko_actors.core.tools import Tool, lookup_qualname
from gecko_actors.exceptions import UserError
from gecko_actors.stores.shared import SharedSessionStore
from gecko_actors.toolboxes import RemoteToolBox

__all__ = ["AgentSpec", "LiveCode", "foreign_modules", "from_data", "to_data"]

VERSION = 1


@dataclass
class AgentSpec:
    """Everything needed to (re)build an agent in any process: names and configuration, never
    a secret (LiteLLM models travel as gateway names, hooks as importable functions)."""

    name: str
    model: Any
    tools: Any = None
    system_prompt: str | PromptTemplate | None = None
    prompt_vars: dict[str, Any] = field(default_factory=dict)
    memory: TokenMemory | None = None
    session_store: SessionStore | None = None
    engine_options: dict[str, Any] = field(default_factory=dict)
    owns_tools: bool = False  # the toolbox actor was made for this agent alone
    hooks: Hooks | None = None
    budget: Budget | None = None


class LiveCode(Exception):
    """A part of a spec that is live code, not data (so the spec travels pickled)."""

    def __init__(self, part: str, why: str) -> None:
        super().__init__(part, why)
        self.part = part
        self.why = why

    def __str__(self) -> str:
        return f"{self.part}: {self.why}"


# --- to data ------------------------------------------------------------------------------


def to_data(spec: AgentSpec) -> dict[str, Any]:
    """``spec`` as msgpack-able data; raises :class:`LiveCode` naming a part that is not."""
    return {
        "v": VERSION,
        "name": spec.name,
        "model": _model_data(spec.model),
        "tools": _tools_data(spec.tools),
        "system_prompt": _prompt_data(spec.system_prompt),
        "prompt_vars": _plain(spec.prompt_vars, "prompt_vars"),
        "memory": None if spec.memory is None else _memory_data(spec.memory),
        "session_store": _store_data(spec.session_store),
        "engine_options": _plain(spec.engine_options, "engine_options"),
        "owns_tools": spec.owns_tools,
        "hooks": _hooks_data(spec.hooks),
        "budget": None if spec.budget is None else asdict(spec.budget),
    }


def foreign_modules(data: dict[str, Any]) -> set[str]:
    """The modules outside this package that ``data`` names code in: a process that cannot
    import them needs the spec's pickled copy."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            ref = value.get("ref")
            if isinstance(ref, str) and not ref.startswith("gecko_actors."):
                found.add(ref.partition(":")[0])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(data)
    return found


def _ref(obj: Any, part: str) -> dict[str, str]:
    """``obj`` as ``{"ref": "module:qualname"}``: found under that name once its module is
    imported (a ``@tool`` found there stands for the function it wraps)."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or module == "__main__" or not qualname or "<" in qualname:
        raise LiveCode(part, f"{obj!r} is not a module-level name of an importable module")
    found = lookup_qualname(module, qualname)
    if found is not obj and getattr(found, "fn", None) is not obj:
        raise LiveCode(part, f"{module}:{qualname} is not {obj!r}")
    return {"ref": f"{module}:{qualname}"}


def _plain(value: Any, part: str) -> Any:
    try:
        msgpack.packb(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LiveCode(part, f"not msgpack-able: {exc}") from None
    return value


def _model_data(model: Any) -> dict[str, Any]:
    if isinstance(model, GatewayModel):
        return {
            "kind": "gateway",
            "label": model.label,
            "replicas": list(model.replica_names),
            "namespace": model.namespace,
            "origin": _plain(model.origin, "model"),
        }
    if isinstance(model, ScriptedModel):
        config = model.config()
        replies = config.pop("replies")
        if callable(replies):
            return {"kind": "scripted", "function": _ref(replies, "model"), **config}
        if all(isinstance(reply, str) for reply in replies):
            return {"kind": "scripted", "replies": replies, **config}
        raise LiveCode("model", "a ScriptedModel whose replies are not all text")
    raise LiveCode("model", f"{type(model).__name__} is not a gateway model or a ScriptedModel")


def _tools_data(tools: Any) -> dict[str, Any] | None:
    if tools is None:
        return None
    if isinstance(tools, RemoteToolBox):
        return {"kind": "remote", "name": tools.name, "replicas": list(tools.replica_names),
                "description": _plain(tools.description(), "tools")}  # fmt: skip
    if isinstance(tools, ToolBox):
        return {
            "kind": "box",
            "metered": isinstance(tools, MeteredToolBox),
            "timeout": tools.timeout,
            "max_concurrency": tools.max_concurrency,
            "tools": [_tool_data(tool) for tool in tools.tools()],
        }
    raise LiveCode("tools", f"{type(tools).__name__} is not a ToolBox or a RemoteToolBox")


def _tool_data(tool: Tool) -> dict[str, Any]:
    part = f"tool {tool.name!r}"
    custom = tool.custom_args_model
    return {
        **_ref(tool.fn, part),
        "name": tool.name,
        "description": tool.description,
        "timeout": tool.timeout,
        "approval": tool.approval,
        "args_model": None if custom is None else _ref(custom, f"{part} args_model"),
    }


def _prompt_data(prompt: str | PromptTemplate | None) -> dict[str, str] | None:
    if prompt is None:
        return None
    if isinstance(prompt, PromptTemplate):
        return {"template": prompt.source}
    return {"text": prompt}


def _memory_data(memory: TokenMemory) -> dict[str, Any]:
    if type(memory) is not TokenMemory:
        raise LiveCode("memory", f"{type(memory).__name__} is not a TokenMemory")
    return {
        "max_tokens": memory.max_tokens,
        "model_name": memory.model_name,
        "cache_size": memory.cache_size,
        "max_message_tokens": memory.max_message_tokens,
    }


def _store_data(store: SessionStore | None) -> dict[str, Any] | None:
    if store is None:
        return None
    if isinstance(store, SharedSessionStore):
        return {"kind": "shared", "url": store.url, "agent": store.agent}
    if isinstance(store, RemoteSessionStore):
        return {"kind": "memory_actor", "actor": store.actor_name,
                "namespace": store.namespace, "agent": store.agent}  # fmt: skip
    raise LiveCode("session_store", f"{type(store).__name__} is not a store named by URL")


def _hooks_data(hooks: Hooks | None) -> dict[str, Any] | None:
    if hooks is None:
        return None
    slots = {slot.name: getattr(hooks, slot.name) for slot in fields(hooks)}
    return {
        name: None if hook is None else _ref(hook, f"hook {name!r}") for name, hook in slots.items()
    }


# --- from data ----------------------------------------------------------------------------


def from_data(data: dict[str, Any]) -> AgentSpec:
    """The spec ``data`` records; a part that cannot be rebuilt here (a module this process
    cannot import, a gateway that cannot be made) is a :class:`UserError` naming it."""
    name = data.get("name", "?")
    if data.get("v") != VERSION:
        raise UserError(
            f"agent {name!r} was recorded by another version of gecko_actors "
            f"(spec version {data.get('v')!r}, this one reads {VERSION})",
            hint="spawn the agent again with this version",
            agent=name,
        )
    hooks = data["hooks"]
    budget = data.get("budget")
    return AgentSpec(
        name=name,
        model=_model(data["model"], name),
        tools=_tools(data["tools"], name),
        system_prompt=_prompt(data["system_prompt"]),
        prompt_vars=data["prompt_vars"],
        memory=None if data["memory"] is None else _memory(data["memory"]),
        session_store=_store(data["session_store"]),
        engine_options=data["engine_options"],
        owns_tools=data["owns_tools"],
        hooks=None
        if hooks is None
        else Hooks(**{k: None if v is None else _resolve(v, name) for k, v in hooks.items()}),
        budget=None if budget is None else Budget(**budget),
    )


def _resolve(data: dict[str, Any], agent: str) -> Any:
    """The object ``data["ref"]`` names, imported here."""
    module, _, qualname = data["ref"].partition(":")
    try:
        importlib.import_module(module)
    except Exception as exc:
        raise UserError(
            f"agent {agent!r} uses {data['ref']}, and module {module!r} cannot be imported "
            f"here: {type(exc).__name__}: {str(exc)[:200]}",
            hint="install your code where the agent runs (a package, or the job's runtime_env "
            "working_dir / py_modules), then call the agent again",
            agent=agent,
        ) from None
    found = lookup_qualname(module, qualname)
    if found is None:
        raise UserError(
            f"agent {agent!r} uses {data['ref']}, which module {module!r} no longer defines",
            hint="restore that name in the module, or spawn the agent again",
            agent=agent,
        )
    return found


def _prompt(data: dict[str, str] | None) -> str | PromptTemplate | None:
    if data is None:
        return None
    return PromptTemplate(data["template"]) if "template" in data else data["text"]


def _model(data: dict[str, Any], agent: str) -> Any:
    if data["kind"] == "gateway":
        return _gateway(data)
    replies = data["replies"] if "replies" in data else _resolve(data["function"], agent)
    return ScriptedModel(
        replies,
        name=data["name"],
        stream_chunk_words=data["stream_chunk_words"],
        price=data.get("price"),
    )


_GATEWAYS: dict[str, GatewayModel] = {}  # by label: the gateways found (or made) here
_GATEWAYS_LOCK = threading.Lock()


def _gateway(data: dict[str, Any]) -> GatewayModel:
    """The gateway model ``data`` records; if its gateway is gone (with an earlier
    cluster) and its configuration is recorded, the gateway is made again. Checked once per
    gateway per process, not once per agent."""
    label = data["label"]
    with _GATEWAYS_LOCK:
        found = _GATEWAYS.get(label)
        if found is None:
            found = _GATEWAYS[label] = _live_gateway(data)
    return found


def _live_gateway(data: dict[str, Any]) -> GatewayModel:
    model = GatewayModel(data["label"], data["replicas"], data["namespace"], data["origin"])
    origin = data["origin"]
    try:
        ray.get_actor(data["replicas"][0], namespace=data["namespace"])
        return model
    except ValueError:
        if origin is None:
            return model  # its calls say that the gateway is gone
    from gecko_actors.core.litellm_model import LiteLLMModel
    from gecko_actors.gateway import ModelGateway

    limits = origin.get("limits") or {}
    gateway = ModelGateway.spawn(
        LiteLLMModel(**origin["model"]), replicas=len(data["replicas"]), **limits
    )
    return gateway.as_model()


def _tools(data: dict[str, Any] | None, agent: str) -> Any:
    if data is None:
        return None
    if data["kind"] == "remote":
        return RemoteToolBox(data["name"], data["replicas"], data["description"])
    box_type = MeteredToolBox if data["metered"] else ToolBox
    box = box_type(timeout=data["timeout"], max_concurrency=data["max_concurrency"])
    for item in data["tools"]:
        target = _resolve(item, agent)
        box.register(
            Tool(
                target.fn if isinstance(target, Tool) else target,
                name=item["name"],
                description=item["description"],
                args_model=None
                if item["args_model"] is None
                else _resolve(item["args_model"], agent),
                timeout=item["timeout"],
                approval=item.get("approval", False),
            )
        )
    return box


def _memory(data: dict[str, Any]) -> TokenMemory:
    return TokenMemory(
        data["max_tokens"],
        data["model_name"],
        cache_size=data["cache_size"],
        max_message_tokens=data["max_message_tokens"],
    )


def _store(data: dict[str, Any] | None) -> SessionStore | None:
    if data is None:
        return None
    if data["kind"] == "shared":
        return SharedSessionStore(data["url"], data["agent"])
    return RemoteSessionStore(data["actor"], data["namespace"], data["agent"])
