"""Storage backends: durable session stores, a URL to choose one from configuration, and a
LanceDB vector store."""

from gecko_actors.core.embedders import Embedder, HashEmbedder, LiteLLMEmbedder
from gecko_actors.core.sessions import InMemorySessionStore
from gecko_actors.stores.redis_sessions import RedisSessionStore
from gecko_actors.stores.registry import (
    StoreURL,
    known_schemes,
    parse_store_url,
    redact_url,
    register_session_store,
    register_vector_store,
    session_store_from_url,
    vector_store_from_url,
)
from gecko_actors.stores.sessions import SQLiteSessionStore
from gecko_actors.stores.vectors import LanceVectorStore, VectorHit

__all__ = [
    # session stores
    "InMemorySessionStore",
    "RedisSessionStore",
    "SQLiteSessionStore",
    # vectors
    "Embedder",
    "HashEmbedder",
    "LanceVectorStore",
    "LiteLLMEmbedder",
    "VectorHit",
    # choosing a store by URL
    "StoreURL",
    "known_schemes",
    "parse_store_url",
    "redact_url",
    "register_session_store",
    "register_vector_store",
    "session_store_from_url",
    "vector_store_from_url",
]
