"""Storage backends: durable session stores and a URL to choose one from configuration."""

from gecko_actors.core.sessions import InMemorySessionStore
from gecko_actors.stores.sessions import SQLiteSessionStore, session_store_from_url

__all__ = ["InMemorySessionStore", "SQLiteSessionStore", "session_store_from_url"]
