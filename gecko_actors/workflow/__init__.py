"""Durable workflows: graphs of agents, teams and functions run by a coordinator actor."""

from gecko_actors.workflow.graph import Next, NodeContext, RetryPolicy, WorkflowGraph

__all__ = ["Next", "NodeContext", "RetryPolicy", "WorkflowGraph"]
