"""gecko_actors: an actor-model runtime for multi-agent LLM systems on Ray."""

from gecko_actors._version import __version__
from gecko_actors.core.agent import AgentBuilder, LocalAgent
from gecko_actors.core.budget import Budget
from gecko_actors.core.calculator import CalculatorLimits, calculator
from gecko_actors.core.engine import MAX_TURNS_REACHED, AgentStream, Hooks, ReActEngine
from gecko_actors.core.events import Event, EventBus
from gecko_actors.core.litellm_model import LiteLLMModel
from gecko_actors.core.mcp_tools import MCPTool, mcp_tools
from gecko_actors.core.media import MediaResource
from gecko_actors.core.memory import TokenMemory
from gecko_actors.core.messages import AgentOutput, ContentBlock, Message, ToolCall, Usage
from gecko_actors.core.models import ChatModel, ModelResponse
from gecko_actors.core.prompt import PromptTemplate
from gecko_actors.core.scripted import ScriptedModel
from gecko_actors.core.sessions import InMemorySessionStore, SessionStore
from gecko_actors.core.toolbox import ToolBox, ToolStats
from gecko_actors.core.tools import Tool, ToolContext, ToolResult, tool
from gecko_actors.core.tracing import configure_tracing, shutdown_tracing, tracing_enabled
from gecko_actors.exceptions import (
    BudgetExceededError,
    CalculatorError,
    CheckpointError,
    ConfigurationError,
    GeckoError,
    HostBusy,
    IncompatibleVersion,
    ModelError,
    ModelTimeoutError,
    OwnershipLost,
    RunError,
    ScriptExhaustedError,
    StorageError,
    StructuredOutputError,
    TeamError,
    TemplateError,
    ToolArgumentsError,
    ToolError,
    ToolNotFoundError,
    ToolTimeoutError,
    UserError,
    WorkflowError,
)
from gecko_actors.knowledge import (
    Document,
    RecursiveSplitter,
    expand_paths,
    read_document,
    read_documents,
    register_reader,
)
from gecko_actors.logging import configure_logging, get_logger
from gecko_actors.retrieval import retrieval_tool
from gecko_actors.settings import Settings, load_settings
from gecko_actors.workflow.graph import Next, NodeContext, RetryPolicy

# The Ray layer is imported on first use, so that `import gecko_actors` (and the core) stays
# Ray-free and fast: a plain asyncio program or test never pays for importing Ray.
_LAZY = {
    "Agent": "gecko_actors.agents.handle",
    "RemoteAgentStream": "gecko_actors.agents.stream",
    "AsyncRemoteAgentStream": "gecko_actors.agents.stream",
    "Memory": "gecko_actors.memory",
    "ModelGateway": "gecko_actors.gateway",
    "RemoteToolBox": "gecko_actors.toolboxes",
    "Team": "gecko_actors.team",
    "TeamResult": "gecko_actors.team",
    "Workflow": "gecko_actors.workflow.run",
    "WorkflowRun": "gecko_actors.workflow.run",
    "Schedule": "gecko_actors.checkpoint.schedules",
    "ScheduleHandle": "gecko_actors.workflow.schedules",
    "drain_workflow_host": "gecko_actors.workflow.hosting",
    "IngestSummary": "gecko_actors.ingestion",
    "ingest": "gecko_actors.ingestion",
    "LanceVectorStore": "gecko_actors.stores.vectors",
    "RedisSessionStore": "gecko_actors.stores.redis_sessions",
    "SQLiteSessionStore": "gecko_actors.stores.sessions",
    "register_session_store": "gecko_actors.stores.registry",
    "register_vector_store": "gecko_actors.stores.registry",
    "session_store_from_url": "gecko_actors.stores.registry",
    "vector_store_from_url": "gecko_actors.stores.registry",
    "init": "gecko_actors.runtime",
    "shutdown": "gecko_actors.runtime",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gecko_actors' has no attribute {name!r}")


__all__ = [
    "__version__",
    # runtime
    "init",
    "shutdown",
    # actors
    "Agent",
    "AsyncRemoteAgentStream",
    "Memory",
    "ModelGateway",
    "RemoteAgentStream",
    "RemoteToolBox",
    "Team",
    "TeamResult",
    # workflows
    "Next",
    "NodeContext",
    "RetryPolicy",
    "Schedule",
    "ScheduleHandle",
    "Workflow",
    "WorkflowRun",
    "drain_workflow_host",
    # agents
    "AgentBuilder",
    "AgentStream",
    "Hooks",
    "LocalAgent",
    "MAX_TURNS_REACHED",
    "ReActEngine",
    # models
    "Budget",
    "ChatModel",
    "LiteLLMModel",
    "ModelResponse",
    "ScriptedModel",
    # messages
    "AgentOutput",
    "ContentBlock",
    "MediaResource",
    "Message",
    "ToolCall",
    "Usage",
    # tools
    "CalculatorLimits",
    "MCPTool",
    "Tool",
    "ToolBox",
    "ToolContext",
    "ToolResult",
    "ToolStats",
    "calculator",
    "mcp_tools",
    "tool",
    # memory and prompts
    "InMemorySessionStore",
    "PromptTemplate",
    "SessionStore",
    "TokenMemory",
    # storage
    "LanceVectorStore",
    "RedisSessionStore",
    "SQLiteSessionStore",
    "register_session_store",
    "register_vector_store",
    "session_store_from_url",
    "vector_store_from_url",
    # knowledge
    "Document",
    "IngestSummary",
    "ingest",
    "retrieval_tool",
    "RecursiveSplitter",
    "expand_paths",
    "read_document",
    "read_documents",
    "register_reader",
    # events, settings, logging, traces
    "Event",
    "EventBus",
    "Settings",
    "configure_logging",
    "configure_tracing",
    "get_logger",
    "load_settings",
    "shutdown_tracing",
    "tracing_enabled",
    # exceptions
    "BudgetExceededError",
    "CalculatorError",
    "CheckpointError",
    "ConfigurationError",
    "GeckoError",
    "HostBusy",
    "IncompatibleVersion",
    "ModelError",
    "ModelTimeoutError",
    "OwnershipLost",
    "RunError",
    "ScriptExhaustedError",
    "StorageError",
    "TeamError",
    "StructuredOutputError",
    "TemplateError",
    "ToolArgumentsError",
    "ToolError",
    "ToolNotFoundError",
    "ToolTimeoutError",
    "UserError",
    "WorkflowError",
]
