"""Ingestion and search benchmarks: figures measured side by side in one run (never asserted).

Run: python benchmarks/bench_ingest.py [--quick]

- ingestion throughput (chunks/s) of 200 files with 1 and with 2 embedder actors, and their
  ratio; the embedder burns ~2 ms of CPU per chunk, as a small local model would (the offline
  hash embedder alone is too cheap to be worth spreading);
- p50/p95 latency of a top-5 search on 10,000 chunks: vector, full-text and hybrid.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gecko_actors
from gecko_actors import LanceVectorStore, RecursiveSplitter, ingest
from gecko_actors.core.embedders import HashEmbedder

WORDS = [
    "actor",
    "ray",
    "agent",
    "tool",
    "memory",
    "workflow",
    "checkpoint",
    "vector",
    "search",
    "team",
    "node",
    "cluster",
]


class CpuEmbedder(HashEmbedder):
    """The hash embedder plus ~2 ms of CPU per text, like a small local model."""

    async def embed(self, texts):  # type: ignore[override]
        for text in texts:
            digest = text.encode()
            for _ in range(2000):
                digest = hashlib.sha256(digest).digest()
        return await super().embed(texts)


# removed when the benchmark exits: a run writes a corpus and three vector stores
SCRATCH = tempfile.TemporaryDirectory(prefix="gecko-bench-ingest-")


def scratch() -> Path:
    """A new empty folder under SCRATCH."""
    return Path(tempfile.mkdtemp(dir=SCRATCH.name))


def corpus(folder: Path, files: int) -> None:
    for i in range(files):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(400)]
        (folder / f"doc{i:04}.txt").write_text(" ".join(words) + f" unique{i}")


def throughput(files: int) -> None:
    folder = scratch()
    corpus(folder, files)
    rates = {}
    for actors in (1, 2):
        store = LanceVectorStore(scratch(), embedder=CpuEmbedder(64))
        summary = ingest(
            folder,
            store=store,
            splitter=RecursiveSplitter(chunk_size=300, overlap=30),
            embed_actors=actors,
            batch_size=16,
            progress=False,
        )
        rates[actors] = summary.chunks / summary.seconds
        print(f"  {actors} embedder actor(s): {summary}")
    print(
        f"ingestion: {rates[1]:.0f} chunks/s with 1 actor, {rates[2]:.0f} with 2 "
        f"→ 2 ÷ 1 = {rates[2] / rates[1]:.2f}"
    )


async def search_latency(chunks: int, queries: int = 50) -> None:
    store = LanceVectorStore(scratch(), embedder=HashEmbedder(256))
    texts = [
        " ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(30)) + f" item{i}"
        for i in range(chunks)
    ]
    for start in range(0, chunks, 1000):
        await store.add(
            texts[start : start + 1000], ids=[f"c{i}" for i in range(start, start + 1000)]
        )
    await store.search("warm up", mode="hybrid")  # builds the full-text index
    await store.optimize()
    line = []
    for mode in ("vector", "fts", "hybrid"):
        times = []
        for q in range(queries):
            started = time.perf_counter()
            await store.search(f"{WORDS[q % len(WORDS)]} item{q * 37}", k=5, mode=mode)
            times.append(time.perf_counter() - started)
        times.sort()
        p95 = times[int(len(times) * 0.95) - 1]
        line.append(f"{mode} p50 {statistics.median(times) * 1e3:.1f} ms / p95 {p95 * 1e3:.1f} ms")
    print(f"top-5 search on {chunks:,} chunks: " + "; ".join(line))


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    gecko_actors.init(num_cpus=2, include_dashboard=False)
    throughput(40 if quick else 200)
    asyncio.run(search_latency(2000 if quick else 10_000))
    gecko_actors.shutdown()
