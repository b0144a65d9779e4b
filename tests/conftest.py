"""Shared test configuration: offline by construction."""

from __future__ import annotations

import os

# Never reach for the network: litellm's price map and tiktoken's files are local.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

pytest_plugins = ["gecko_actors.testing.pytest_plugin"]
