"""Storage backends: durable session stores, a URL to choose one from configuration, and a
LanceDB vector store."""

from gecko_actors.core.embedders import Embedder, HashEmbedder, LiteLLMEmbedder
from gecko_actors.core.sessions import InMemorySessionStore
from gecko_actors.stores.sessions import SQLiteSessionStore, session_store_from_url
from gecko_actors.stores.vectors import LanceVectorStore, VectorHit

__all__ = [
    "Embedder",
    "HashEmbedder",
    "InMemorySessionStore",
    "LanceVectorStore",
    "LiteLLMEmbedder",
    "SQLiteSessionStore",
    "VectorHit",
    "session_store_from_url",
]
