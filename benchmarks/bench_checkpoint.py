"""Checkpoint benchmarks: ratios measured side by side in one run (never asserted in tests).

Run: python benchmarks/bench_checkpoint.py

- bytes written per step at steps 10, 100 and 1,000 of a loop whose every step appends one
  message to a conversation: the per-step figure must stay flat (goal: step 1,000 <= 1.1 x
  step 10), because a step stores its own output, never the history;
- the cost of committing a step to file:// (a fenced commit: an ownership check, the
  content-addressed data object, then the marker created only if absent) vs running the step
  without a checkpoint, and the same on memory://.
"""

from __future__ import annotations

import tempfile
import time

from gecko_actors import Message
from gecko_actors.checkpoint import CheckpointStore, Manifest, StateWrite, StepRecord


def bytes_per_step(root: str, steps: int = 1000) -> None:
    store = CheckpointStore(f"file://{root}/bytes")
    store.create_manifest(Manifest("loop", "bench", "fp", input="hi", created_at=time.time()))
    epoch = store.claim("loop")
    written: dict[int, int] = {}
    conversation: list[Message] = []
    for seq in range(steps):
        message = Message.assistant(f"turn {seq}: " + "some words of a reply " * 8)
        conversation.append(message)  # the run's history grows...
        record = StepRecord(
            seq=seq,
            node="chat",
            visit=seq + 1,
            output=message,
            writes=(StateWrite("turns", seq + 1),),
            duration=0.01,
            epoch=epoch,
        )
        written[seq + 1] = store.commit_step("loop", record)  # ...a step's record does not
    at = {n: written[n] for n in (10, 100, 1000) if n in written}
    print(
        "bytes per step: "
        + ", ".join(f"step {n}: {b}" for n, b in at.items())
        + f" → step 1000 / step 10 = {at[1000] / at[10]:.3f} (goal <= 1.1)"
    )


def commit_overhead(uri: str, steps: int = 300) -> None:
    store = CheckpointStore(uri)
    epoch = store.claim("overhead")
    output = {"answer": "x" * 200}

    def run(checkpoint: bool) -> float:
        start = time.perf_counter()
        for seq in range(steps):
            value = dict(output, seq=seq)  # the "work" of a trivial node
            if checkpoint:
                record = StepRecord(seq, "n", seq + 1, value, epoch=epoch)
                store.commit_step("overhead", record)
        return (time.perf_counter() - start) / steps

    bare, committed = run(False), run(True)
    print(
        f"trivial step: {bare * 1e6:.1f} µs bare, {committed * 1e3:.2f} ms with a "
        f"{uri.split(':', 1)[0]}:// commit "
        f"(+{(committed - bare) * 1e3:.2f} ms per step)"
    )


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="gecko-bench-checkpoint-") as root:
        bytes_per_step(root)
        commit_overhead(f"file://{root}/overhead")
    commit_overhead("memory://bench")
