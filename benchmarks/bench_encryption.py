"""Encryption at rest benchmark: ratios measured side by side in one run (never asserted).

Run: python benchmarks/bench_encryption.py  (needs ``pip install "gecko-actors[encryption]"``)

For a step whose output is 2 KB and 64 KB of text (plus a small state write), the time to
commit it to a ``file://`` store (a fenced commit: an ownership check, the data, the marker)
and to load it back (``load_steps``, what a resume does), with ``GECKO_CHECKPOINT_KEY`` set
and without, in alternating rounds: the median round, the median of each round's ratio (its
two halves ran back to back) and the bytes each encrypted step adds. Then the CPU cost of the
encryption alone: sealing a step's record map and opening it again, in microseconds. The key
is made for the run and never written anywhere.
"""

from __future__ import annotations

import base64
import os
import statistics
import tempfile
import time

from gecko_actors.checkpoint import CheckpointStore, StateWrite, StepRecord, crypto
from gecko_actors.checkpoint.crypto import KEY_VARIABLE
from gecko_actors.checkpoint.records import pack, unpack
from gecko_actors.checkpoint.steps import step_data
from gecko_actors.core.messages import Usage

STEPS = 200
ROUNDS = 9
WORDS = "the claimant wrote that the parcel arrived late and damaged, asking for a refund "


def text(size: int) -> str:
    return (WORDS * (size // len(WORDS) + 1))[:size]


def one_round(root: str, size: int, key: str | None) -> tuple[float, float, int]:
    """Seconds per commit, seconds per step loaded, bytes per step, for ``STEPS`` steps."""
    if key is None:
        os.environ.pop(KEY_VARIABLE, None)
    else:
        os.environ[KEY_VARIABLE] = key
    store = CheckpointStore(f"file://{root}/{size}-{key is not None}-{time.perf_counter_ns()}")
    epoch = store.claim("bench")
    output = {"answer": text(size), "sources": ["a", "b"]}
    usage = Usage(requests=1, prompt_tokens=900, completion_tokens=300, total_tokens=1200)
    written = 0
    start = time.perf_counter()
    for seq in range(STEPS):
        record = StepRecord(
            seq,
            "answer",
            seq + 1,
            output,
            writes=(StateWrite("notes", text(200)),),
            usage=usage,
            epoch=epoch,
            finished_at=time.time(),
        )
        written += store.commit_step("bench", record)
    commit = (time.perf_counter() - start) / STEPS
    start = time.perf_counter()
    assert len(store.load_steps("bench")) == STEPS
    load = (time.perf_counter() - start) / STEPS
    return commit, load, written // STEPS


def compare(root: str, size: int, key: str) -> None:
    pairs = []
    for _ in range(ROUNDS):  # alternate, so that a busy moment costs both sides alike
        pairs.append((one_round(root, size, None), one_round(root, size, key)))
    plain = [statistics.median(x) for x in zip(*(p for p, _ in pairs), strict=True)]
    sealed = [statistics.median(x) for x in zip(*(s for _, s in pairs), strict=True)]
    # The ratio of each round's two halves, run back to back: a slow moment cancels out.
    commit = statistics.median(s[0] / p[0] for p, s in pairs)
    load = statistics.median(s[1] / p[1] for p, s in pairs)
    label = f"{size // 1024} KB output"
    print(
        f"{label:>13}: commit {plain[0] * 1e3:.2f} ms plain, {sealed[0] * 1e3:.2f} ms "
        f"encrypted per step (x{commit:.2f}); load {plain[1] * 1e3:.2f} ms vs "
        f"{sealed[1] * 1e3:.2f} ms per step (x{load:.2f}); {plain[2]} vs {sealed[2]} bytes "
        f"per step (+{sealed[2] - plain[2]})"
    )


def crypto_alone(size: int, key: str, repeat: int = 5000) -> None:
    """Microseconds to seal one step's record map, and to open it again, without I/O."""
    os.environ[KEY_VARIABLE] = key
    record = StepRecord(0, "answer", 1, {"answer": text(size)}, (StateWrite("notes", text(200)),))
    start = time.perf_counter()
    for _ in range(repeat):
        raw = pack(crypto.seal_record(step_data("bench", record)))
    seal = (time.perf_counter() - start) / repeat
    start = time.perf_counter()
    for _ in range(repeat):
        pack(step_data("bench", record))
    bare = (time.perf_counter() - start) / repeat
    start = time.perf_counter()
    for _ in range(repeat):
        crypto.open_record(unpack(raw, "step", "bench", "bench"), "bench")
    opened = (time.perf_counter() - start) / repeat
    start = time.perf_counter()
    plain = pack(step_data("bench", record))
    for _ in range(repeat):
        unpack(plain, "step", "bench", "bench")
    read = (time.perf_counter() - start) / repeat
    print(
        f"{size // 1024:>4} KB, no I/O: encode+pack {bare * 1e6:.0f} µs, with sealing "
        f"{seal * 1e6:.0f} µs (+{(seal - bare) * 1e6:.0f}); unpack {read * 1e6:.0f} µs, with "
        f"opening {opened * 1e6:.0f} µs (+{(opened - read) * 1e6:.0f})"
    )
    os.environ.pop(KEY_VARIABLE, None)


if __name__ == "__main__":
    os.environ.pop(KEY_VARIABLE, None)
    made = base64.b64encode(os.urandom(32)).decode()
    print(f"{STEPS} steps per round, median of {ROUNDS} rounds, file:// store")
    with tempfile.TemporaryDirectory(prefix="gecko-bench-encryption-") as root:
        for size in (2 * 1024, 64 * 1024):
            compare(root, size, made)
    for size in (2 * 1024, 64 * 1024):
        crypto_alone(size, made)
    os.environ.pop(KEY_VARIABLE, None)
