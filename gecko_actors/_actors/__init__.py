"""Thin Ray actor shells around the core, and the helpers they share. Private: users reach
them through the typed handles (``Agent``, ``ModelGateway``, ``RemoteToolBox``, ``Memory``)."""
