"""``ModelGateway``: the typed handle to the gateway replicas of one model configuration."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any

import ray

from gecko_actors._actors.common import create, lookup, unwrap
from gecko_actors._actors.gateway import (
    EmbeddingGatewayActor,
    GatewayActor,
    GatewayEmbedder,
    GatewayModel,
    LimiterActor,
)
from gecko_actors.core.embedders import LiteLLMEmbedder
from gecko_actors.core.litellm_model import LiteLLMModel
from gecko_actors.core.messages import Usage
from gecko_actors.core.ratelimit import RateLimits, Reservation
from gecko_actors.exceptions import UserError
from gecko_actors.runtime import ensure_initialized, namespace


def gateway_label(model: LiteLLMModel) -> str:
    """A readable, stable name for a model configuration: ``<model>-<hash of its config>``."""
    config = json.dumps(model.config(), sort_keys=True, default=str)
    digest = hashlib.sha256(config.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '-', model.model)}-{digest}"


class ModelGateway:
    """Gateway replicas for one :class:`LiteLLMModel` configuration, shared cluster-wide.

    ``ModelGateway.spawn`` is idempotent per configuration: every driver and agent asking for
    the same model gets the same replicas and the same limits. Pass the gateway (or the
    ``LiteLLMModel`` itself, for a one-replica gateway without limits) as an agent's model.

    Example:
        >>> gw = ModelGateway.spawn(LiteLLMModel("openai/gpt-4o-mini"), replicas=2,
        ...                         requests_per_minute=500, tokens_per_minute=200_000)
        >>> agent = Agent.spawn("writer", model=gw)
    """

    def __init__(
        self,
        label: str,
        replica_names: list[str],
        limiter_name: str | None,
        origin: dict[str, Any] | None = None,
    ) -> None:
        self.label = label
        self.replica_names = replica_names
        self.limiter_name = limiter_name
        self.origin = origin  # the model's configuration and limits, to make it again

    def __repr__(self) -> str:
        return f"ModelGateway({self.label!r}, replicas={len(self.replica_names)})"

    @classmethod
    def spawn(
        cls,
        model: LiteLLMModel,
        *,
        replicas: int = 1,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        window_seconds: float = 60.0,
    ) -> ModelGateway:
        """Start (or attach to) the gateway replicas of ``model``'s configuration.

        Only the configuration travels to the replicas, with secrets as environment-variable
        names (``api_key_env``, ``extra_env``, ``headers_env``, the ``GECKO_API_KEY``
        setting): a model holding a secret value is refused before any actor is created.

        Raises:
            UserError: ``model`` is not a LiteLLMModel, holds a secret value (the error names
                the argument), or ``replicas`` is below 1.
            ConfigurationError: a variable the model needs is not set where the gateway runs.
        """
        if not isinstance(model, LiteLLMModel):
            raise UserError(
                f"a gateway serves a LiteLLMModel, not {type(model).__name__}",
                hint="ScriptedModel and other in-process models need no gateway",
            )
        # Before any actor exists: its constructor arguments would stay in Ray's actor table.
        model.check_shippable()
        if replicas < 1:
            raise UserError(f"replicas must be >= 1, got {replicas}")
        ensure_initialized()
        label = gateway_label(model)
        limits = RateLimits(requests_per_minute, tokens_per_minute, window_seconds)
        limiter_name = f"gateway/{label}/limiter"
        limiter = None
        if requests_per_minute or tokens_per_minute:
            limiter = create(ray.remote(LimiterActor), limiter_name, (limits,), get_if_exists=True)
            ray.get(limiter.configure.remote(limits))  # the latest spawn sets the model's limits
        names = [f"gateway/{label}/{i}" for i in range(replicas)]
        handles = [
            create(
                ray.remote(GatewayActor),
                name,
                (model.config(), limiter),
                get_if_exists=True,
                max_concurrency=1000,
            )
            for name in names
        ]
        try:
            ray.get([h.check.remote() for h in handles])
            if limiter is not None:  # replicas that already ran without limits get them now
                ray.get([h.set_limiter.remote(limiter) for h in handles])
        except Exception as exc:
            for handle in [*handles, limiter]:
                if handle is not None:
                    ray.kill(handle, no_restart=True)
            raise unwrap(exc) from None
        origin = {
            "model": model.config(),
            "limits": dataclasses.asdict(limits) if limiter else None,
        }
        return cls(label, names, limiter_name if lookup(limiter_name) else None, origin)

    def as_model(self) -> GatewayModel:
        """The ChatModel agents use to call through this gateway."""
        return GatewayModel(self.label, self.replica_names, namespace(), self.origin)

    def usage(self, *, agent: str | None = None, run_id: str | None = None) -> Usage:
        """Tokens and cost used through this gateway, overall or for one agent or run."""
        handles = [lookup(n) for n in self.replica_names]
        parts = ray.get([h.usage.remote(agent, run_id) for h in handles if h is not None])
        return sum(parts, Usage())

    def limiter_stats(self) -> dict[str, Any] | None:
        handle = lookup(self.limiter_name) if self.limiter_name else None
        return ray.get(handle.stats.remote()) if handle is not None else None

    def limiter_reservations(self) -> list[Reservation]:
        """The latest reservations the limiter granted (see
        :meth:`~gecko_actors.core.ratelimit.SlidingWindowLimiter.recent_reservations`), oldest
        first, with start times on the limiter's clock; empty if the gateway has no limits."""
        handle = lookup(self.limiter_name) if self.limiter_name else None
        return ray.get(handle.recent_reservations.remote()) if handle is not None else []

    def kill(self) -> None:
        for name in [*self.replica_names, self.limiter_name]:
            handle = lookup(name) if name else None
            if handle is not None:
                ray.kill(handle, no_restart=True)


def embedding_gateway(embedder: LiteLLMEmbedder, *, replicas: int = 1) -> GatewayEmbedder:
    """Gateway replicas for a LiteLLM embedding model (``embed/<model>-<hash>/<i>``), so that
    no memory actor imports litellm and the key is read where the call is made."""
    # The embedder itself is the actors' argument: no secret value may be inside it.
    embedder.check_shippable()
    if replicas < 1:
        raise UserError(f"replicas must be >= 1, got {replicas}")
    ensure_initialized()
    config = json.dumps(vars(embedder), sort_keys=True, default=str)
    digest = hashlib.sha256(config.encode()).hexdigest()[:8]
    label = f"{re.sub(r'[^A-Za-z0-9_.-]', '-', embedder.model)}-{digest}"
    names = [f"embed/{label}/{i}" for i in range(replicas)]
    handles = [
        create(
            ray.remote(EmbeddingGatewayActor),
            name,
            (embedder,),
            get_if_exists=True,
            max_concurrency=1000,
        )
        for name in names
    ]
    try:
        ray.get([h.check.remote() for h in handles])
    except Exception as exc:
        for handle in handles:
            ray.kill(handle, no_restart=True)
        raise unwrap(exc) from None
    return GatewayEmbedder(label, names, namespace(), embedder.dimensions)


def resolve_model(model: Any) -> Any:
    """What an agent actor should hold for ``model``: a gateway proxy for LiteLLM models,
    the model itself for in-process ones (ScriptedModel and custom ChatModels)."""
    if isinstance(model, ModelGateway):
        return model.as_model()
    if isinstance(model, LiteLLMModel):
        return ModelGateway.spawn(model).as_model()
    return model
