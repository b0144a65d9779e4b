"""Durable workflows: graphs of agents, teams and functions run by a coordinator actor."""

from gecko_actors.workflow.graph import Next, NodeContext, RetryPolicy, WorkflowGraph

__all__ = ["Next", "NodeContext", "RetryPolicy", "Workflow", "WorkflowGraph", "WorkflowRun"]


def __getattr__(name: str):
    # Workflow and WorkflowRun need Ray; the graph definition does not.
    if name in ("Workflow", "WorkflowRun"):
        from gecko_actors.workflow import run

        return getattr(run, name)
    raise AttributeError(f"module 'gecko_actors.workflow' has no attribute {name!r}")
