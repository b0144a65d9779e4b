"""The parts of :mod:`gecko_actors._redact`, one concept a module, each depending only on those
before it: :mod:`~gecko_actors._secrets.names` (secret by name),
:mod:`~gecko_actors._secrets.shapes` (secret by value's shape),
:mod:`~gecko_actors._secrets.pairs` (``name=value`` pairs in text) and
:mod:`~gecko_actors._secrets.urls` (credentials in URLs). Import from
:mod:`gecko_actors._redact`, which puts them together with the registered values."""
