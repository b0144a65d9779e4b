"""A workflow host's run index writer: entries appended in batches, off the start path."""

from __future__ import annotations

import asyncio

from gecko_actors.checkpoint.index import IndexEntry, RunIndex
from gecko_actors.logging import get_logger
from gecko_actors.workflow import directory
from gecko_actors.workflow.driven import keep_alive

_log = get_logger("gecko_actors.workflow")


def partition(host: str) -> str:
    """The run index partition a host writes (its name, with dots for slashes)."""
    return host.replace("/", ".")


class IndexWriter:
    """Appends host ``host``'s index entries in batches: one object per flush, whatever came
    meanwhile; the runs whose final entry is written are then let go from the directory."""

    def __init__(self, index: RunIndex, host: str) -> None:
        self.index, self.host, self.partition = index, host, partition(host)
        self.queue: list[IndexEntry] = []
        self.ended: list[str] = []
        self.next: asyncio.Future[None] | None = None
        self.lock = asyncio.Lock()
        self.flushes = 0

    def add(self, entry: IndexEntry, *, ended: bool = False) -> asyncio.Future[None]:
        """Queue ``entry``; the future is done once its batch was tried. ``ended``: the run's
        final entry; once it is written, the run is forgotten in the directory."""
        self.queue.append(entry)
        if ended:
            self.ended.append(entry.run_id)
        if self.next is None:
            self.next = asyncio.get_running_loop().create_future()
            keep_alive(asyncio.create_task(self._flush(self.next)))
        return self.next

    async def _flush(self, done: asyncio.Future[None]) -> None:
        async with self.lock:  # one write at a time: what queues meanwhile is the next batch
            batch, self.queue, self.next = self.queue, [], None
            ended, self.ended = self.ended, []
            try:
                await asyncio.to_thread(self._write, batch, ended)
                self.flushes += 1
                if self.flushes % 200 == 1:  # at the first flush, then now and then
                    await asyncio.to_thread(self.index.compact, self.partition)
            except Exception as exc:  # the index is a view: the runs themselves are stored
                _log.warning("could not write the run index", error=str(exc))
            finally:
                done.set_result(None)

    def _write(self, batch: list[IndexEntry], ended: list[str]) -> None:
        self.index.append(batch, self.partition)
        for run_id in ended:  # one trip to a thread for the batch, not one per run
            try:
                directory.forget_run(self.host, run_id)
            except Exception as exc:  # a restart would find it ended and let it go then
                _log.warning("could not let an ended run go", run_id=run_id, error=str(exc))
