"""Agents on Ray. For now the streaming of a remote run; the handle, hosts and teams move
here as hosting lands."""
