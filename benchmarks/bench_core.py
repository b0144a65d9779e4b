"""Core benchmarks: ratios measured side by side in one run (never asserted in tests).

Run: python benchmarks/bench_core.py

- token counting: warm LRU cache vs cold (encoding every message);
- tools: execute_many on I/O-bound tools vs running them one by one;
- engine overhead: a full ReAct run with one tool call vs the two bare model calls it makes;
- tracing: the same runs with OpenTelemetry tracing on (4 spans a run, in-memory exporter) vs
  off (the default).
"""

from __future__ import annotations

import asyncio
import time

from gecko_actors import LocalAgent, Message, ScriptedModel, TokenMemory, ToolBox, ToolCall, tool


def _timed(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_token_cache() -> None:
    messages = [
        Message.user(f"message number {i}: " + "lorem ipsum dolor " * 40) for i in range(500)
    ]

    def cold() -> None:
        TokenMemory(cache_size=10_000).count_many(messages)

    warm_memory = TokenMemory(cache_size=10_000)
    warm_memory.count_many(messages)
    cold_s = _timed(cold)
    warm_s = _timed(lambda: warm_memory.count_many(messages))
    print(
        f"token counting, 500 messages: cold {cold_s * 1000:.1f} ms, warm {warm_s * 1000:.1f} ms"
        f" → cache speed-up x{cold_s / warm_s:.1f}"
    )


@tool
async def fetch(delay: float) -> str:
    """Pretend to call a slow API."""
    await asyncio.sleep(delay)
    return "ok"


def bench_tool_concurrency() -> None:
    box = ToolBox([fetch], max_concurrency=10)
    calls = [ToolCall(id=f"c{i}", name="fetch", arguments='{"delay": 0.05}') for i in range(10)]

    async def one_by_one() -> None:
        for call in calls:
            await box.execute_call(call)

    sequential = _timed(lambda: asyncio.run(one_by_one()), repeat=3)
    concurrent = _timed(lambda: asyncio.run(box.execute_many(calls)), repeat=3)
    print(
        f"10 tool calls of 50 ms: sequential {sequential:.3f} s, execute_many {concurrent:.3f} s"
        f" → x{sequential / concurrent:.1f}"
    )


@tool
def add(a: int, b: int) -> int:
    """Add."""
    return a + b


def bench_engine_overhead(runs: int = 300) -> None:
    def reply(messages, tools):
        return "done" if messages[-1].role == "tool" else ScriptedModel.call("add", a=1, b=2)

    agent = LocalAgent(ScriptedModel(reply), [add])
    bare = ScriptedModel(reply)
    conversation = [Message.user("go")]

    async def engine_runs() -> None:
        for _ in range(runs):
            await agent.arun("go")

    async def bare_calls() -> None:
        for _ in range(runs * 2):
            await bare.complete(conversation)

    engine_s = _timed(lambda: asyncio.run(engine_runs()), repeat=3)
    bare_s = _timed(lambda: asyncio.run(bare_calls()), repeat=3)
    print(
        f"{runs} ReAct runs (2 model calls + 1 tool each): {engine_s:.3f} s "
        f"({engine_s / runs * 1000:.2f} ms/run); bare model calls {bare_s:.3f} s "
        f"→ engine overhead x{engine_s / bare_s:.1f} of a scripted model call"
    )


def bench_tracing_overhead(runs: int = 300) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from gecko_actors import configure_tracing, shutdown_tracing

    def reply(messages, tools):
        return "done" if messages[-1].role == "tool" else ScriptedModel.call("add", a=1, b=2)

    agent = LocalAgent(ScriptedModel(reply), [add])

    async def engine_runs() -> None:
        for _ in range(runs):
            await agent.arun("go")

    off_s = _timed(lambda: asyncio.run(engine_runs()), repeat=3)
    exporter = InMemorySpanExporter()
    configure_tracing(exporter=exporter)
    try:
        on_s = _timed(lambda: asyncio.run(engine_runs()), repeat=3)
    finally:
        shutdown_tracing()
    spans = len(exporter.get_finished_spans()) // (runs * 3)
    print(
        f"{runs} ReAct runs, tracing off {off_s:.3f} s, on {on_s:.3f} s ({spans} spans a run)"
        f" → tracing on ÷ off x{on_s / off_s:.2f}"
    )


if __name__ == "__main__":
    bench_token_cache()
    bench_tool_concurrency()
    bench_engine_overhead()
    bench_tracing_overhead()
