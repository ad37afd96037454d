"""The rebuild's fold in worker processes, a share of the log's record keys each.

The fold is CPU in Python (decoding, the row mapping, COPY text), so one process folds at the
speed of one core. A record's rows depend only on the record, and each folded table is keyed by
an incident id, which is the record key of every topic with a folded table (the topic registry
says so): so the records of each record key fold on their own, in log order, and the keys are
shared out between processes of their own (``python -m blametrail_replay.pool``: it imports the
pure fold and nothing of the rebuild's I/O) by :func:`worker_of`. The rebuild's process reads
the log and sends each worker the records of its keys; the worker sends back the append-only
tables' COPY text, and at the end its folded tables' COPY text in chunks, its Sentry links and
its peak RSS.

By key and not by partition: a poll gives the records of a few partitions at a time, so with
partitions shared out one worker had most polls and the other waited (bench/replay: the two
together used about one core of two). Every record of a key is on one partition, so a key's
records reach its worker in the partition's order, as before.

The protocol, on the worker's stdin and stdout: frames of an 8-byte length and a pickle. To the
worker: ``("add", [(topic, partition, [offset, ...], [value, ...]), ...])``, then ``("end",)``. From it, for each
``add``: ``("batch", Batch, keys held)``; for ``end``: ``("rows", table, text)`` chunks, a
``("rows", table, b"")`` after each table, then ``("done", links, peak RSS in MB)``; for a
failure: ``("error", exception)``. An incident under two record keys (a topic keyed otherwise)
may be folded in two workers: it shows as a duplicate key of a folded table, which the rebuild
treats as a refused fold.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import resource
import struct
import sys
import zlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any, BinaryIO, NamedTuple

from blametrail_common.gctune import tune_gc

from blametrail_replay.fold import Batch, Fold

__all__ = ["FOLDED", "FoldPool", "WorkerFailed", "peak_rss_mb", "worker_of"]

FOLDED = ("incidents", "incident_enrichments", "incident_suspects")
_LENGTH = struct.Struct("<Q")
_CHUNK = 1024 * 1024
# The asyncio reader of a worker's stdout stops reading the pipe once it holds twice this, so
# a worker not read waits on its pipe (a larger frame is still read whole: ``readexactly``
# reads on until it has it; it does not bound a frame).
_LIMIT = 4 * _CHUNK
_ENDS = 4  # folded COPY text chunks (of about _CHUNK) a worker's reader holds for the rebuild


class WorkerFailed(RuntimeError):
    """A fold worker ended or failed without saying why in a frame (killed, out of memory),
    or sent a frame the rebuild cannot read. Not a refused row: the rebuild raises it (the live
    tables are left as they were) rather than going the live way."""


class Record(NamedTuple):
    """What the row mapping reads of a ``ConsumerRecord`` (and the pool routes by: ``key``)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None


def worker_of(key: bytes | None, workers: int) -> int:
    """The worker that folds the records of record key ``key`` (those without a key: the
    first), the same in every run."""
    return zlib.crc32(key or b"") % workers


class FoldPool:
    """``workers`` fold processes; records go to the one of their key (:func:`worker_of`)."""

    def __init__(self, workers: int) -> None:
        self._n = workers
        self._procs: list[asyncio.subprocess.Process] = []
        self._keys = [0] * workers
        # each batch folded, as it comes back (a failure: the exception; None: the caller's end)
        self.results: asyncio.Queue[Batch | BaseException | None] = asyncio.Queue()
        # batches back but not yet written (see :meth:`written`): while they are two a worker,
        # no more are read, so the workers and then the reading of the log wait for Postgres
        self._room = asyncio.Semaphore(2 * workers)
        self._failed: BaseException | None = None
        self._readers: list[asyncio.Task[None]] = []
        # the records of each batch sent to a worker and not back yet (see :attr:`in_flight`)
        self._sent: list[deque[int]] = [deque() for _ in range(workers)]
        self._idle = [asyncio.Event() for _ in range(workers)]
        # what comes back after ``end``, a few chunks a worker: the rest waits in its pipe
        self._ends: list[asyncio.Queue[Any]] = [asyncio.Queue(_ENDS) for _ in range(workers)]
        self.rss_mb: list[float] = []

    async def start(self) -> None:
        for i in range(self._n):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "blametrail_replay.pool",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=_LIMIT,
            )
            self._procs.append(proc)
            self._idle[i].set()
            self._readers.append(asyncio.create_task(self._read(i)))

    @property
    def keys(self) -> int:
        """Distinct keys the workers held at their last batch."""
        return sum(self._keys)

    @property
    def in_flight(self) -> int:
        """Records sent and not folded yet: a record holds at most one key, so the workers hold
        at most :attr:`keys` + this many once they are folded."""
        return sum(sum(sent) for sent in self._sent)

    async def add(self, records: Sequence[Any]) -> None:
        """Send each worker its records; waits while a worker has two batches not folded yet."""
        n = self._n
        # per worker, one list of offsets and one of values per partition: quick to pickle
        by_tp: list[dict[tuple[str, int], tuple[list[int], list[bytes | None]]]] = [
            {} for _ in range(n)
        ]
        for r in records:
            tp = (r.topic, r.partition)
            mine = by_tp[worker_of(r.key, n)]
            held = mine.get(tp)
            if held is None:
                held = mine[tp] = ([], [])
            held[0].append(r.offset)
            held[1].append(r.value)
        for i, group in enumerate(by_tp):
            if not group:
                continue
            await self._until_below(i, 2)
            self._sent[i].append(sum(len(offsets) for offsets, _ in group.values()))
            await self._send(i, ("add", [(*tp, *held) for tp, held in group.items()]))

    async def _send(self, i: int, message: Any) -> None:
        stdin = self._procs[i].stdin
        assert stdin is not None
        data = pickle.dumps(message, protocol=5)
        stdin.write(_LENGTH.pack(len(data)) + data)
        await stdin.drain()

    async def _read(self, i: int) -> None:
        stdout = self._procs[i].stdout
        assert stdout is not None
        while True:
            try:
                size = _LENGTH.unpack(await stdout.readexactly(_LENGTH.size))[0]
                message = pickle.loads(await stdout.readexactly(size))  # noqa: S301 (our child)
            except asyncio.IncompleteReadError:
                code = await self._procs[i].wait()
                self._fail(i, ("error", WorkerFailed(f"fold worker {i} ended (exit {code})")))
                return
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # a frame that does not unpickle here, memory, ...
                failure = WorkerFailed(f"fold worker {i}: a frame not read: {exc!r}")
                self._fail(i, ("error", failure))
                return
            kind = message[0]
            if kind == "batch":
                await self._room.acquire()
                self._keys[i] = message[2]
                self._sent[i].popleft()
                self._idle[i].set()
                self.results.put_nowait(message[1])
            elif kind == "error":
                self._fail(i, message)
                return
            else:
                await self._ends[i].put(message)
                if kind == "done":
                    return

    def written(self) -> None:
        """A batch taken from :attr:`results` is written: room for the next."""
        self._room.release()

    def abort(self, exc: BaseException) -> None:
        """Fail the pool from outside (the writing of its batches failed): whatever waits on it
        (:meth:`add`, :meth:`drain`, :meth:`rows`) raises ``exc`` (or an earlier failure)."""
        for i in range(self._n):
            self._fail(i, ("error", exc))

    def _fail(self, i: int, message: tuple[str, BaseException]) -> None:
        self._failed = self._failed or message[1]
        self.results.put_nowait(message[1])
        ends = self._ends[i]
        while not ends.empty():  # rows queued before the failure are of no use now
            ends.get_nowait()
        ends.put_nowait(message)
        for event in self._idle:
            event.set()

    async def _until_below(self, i: int, pending: int) -> None:
        while self._failed is None and len(self._sent[i]) >= pending:
            self._idle[i].clear()
            await self._idle[i].wait()
        if self._failed is not None:
            raise self._failed

    async def drain(self) -> None:
        """Wait until every batch sent has come back (in :attr:`results`)."""
        for i in range(self._n):
            await self._until_below(i, 1)

    async def end(self) -> None:
        """Ask every worker for its folded rows (then read them with :meth:`rows`)."""
        for i in range(self._n):
            await self._send(i, ("end",))

    async def rows(self, i: int, table: str) -> AsyncIterator[bytes]:
        """Worker ``i``'s COPY text of ``table`` (``FOLDED`` order, each read to its end)."""
        while True:
            message = await self._ends[i].get()
            if message[0] == "error":
                raise message[1]
            if message[0] != "rows" or message[1] != table:
                raise WorkerFailed(f"fold worker {i}: {message[0]} where rows of {table} were due")
            if not message[2]:
                return
            yield message[2]

    async def links(self, i: int) -> list[dict[str, Any]]:
        """Worker ``i``'s Sentry links, once its rows are read; its peak RSS to :attr:`rss_mb`."""
        message = await self._ends[i].get()
        if message[0] == "error":
            raise message[1]
        self.rss_mb.append(message[2])
        return message[1]  # type: ignore[no-any-return]

    @property
    def workers(self) -> int:
        return self._n

    async def close(self) -> None:
        """Stop the workers (killed if not done, or at once if the pool failed: one may wait on
        a full pipe) and their readers."""
        for proc in self._procs:
            if proc.returncode is None and self._failed is not None:
                proc.kill()
            elif proc.returncode is None and proc.stdin is not None:
                proc.stdin.close()
        for proc in self._procs:
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._procs, self._readers = [], []


def peak_rss_mb() -> float:
    """This process's peak RSS since it started its program (``VmHWM``; ``ru_maxrss`` keeps
    the peak of the process it was forked from, across the exec)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _frames(stream: BinaryIO) -> Any:
    while header := stream.read(_LENGTH.size):
        (size,) = _LENGTH.unpack(header)
        yield pickle.loads(stream.read(size))  # noqa: S301 (our parent)


def _put(out: BinaryIO, message: Any) -> None:
    data = pickle.dumps(message, protocol=5)
    out.write(_LENGTH.pack(len(data)))
    out.write(data)
    out.flush()


def _serve(inp: BinaryIO, out: BinaryIO) -> None:
    fold = Fold()
    for message in _frames(inp):
        if message[0] == "add":
            records = [
                Record(topic, partition, offset, value)
                for topic, partition, offsets, values in message[1]
                for offset, value in zip(offsets, values, strict=True)
            ]
            batch = fold.add(records)
            _put(out, ("batch", batch, fold.keys))
            continue
        for table in FOLDED:
            buf: list[bytes] = []
            size = 0
            for line in fold.lines(table):
                buf.append(line)
                size += len(line)
                if size >= _CHUNK:
                    _put(out, ("rows", table, b"".join(buf)))
                    buf, size = [], 0
            if buf:
                _put(out, ("rows", table, b"".join(buf)))
            _put(out, ("rows", table, b""))
        links = list(fold.links.values())
        _put(out, ("done", links, peak_rss_mb()))
        return


def main() -> None:
    # a fold makes and drops objects by the million (decoded events, rows): at Python's own
    # thresholds the collector made folding bench/replay's log (300k records, in one process)
    # 45 us a record against 34, and the rebuild's fold phase 9.5 s against 8.9
    tune_gc()
    # the protocol owns the real stdout; anything printed goes to stderr
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    try:
        _serve(inp, out)
    except BaseException as exc:  # told to the rebuild, which raises it
        try:
            pickle.loads(pickle.dumps(exc))  # noqa: S301 (our own)
        except BaseException:  # an exception that cannot be pickled, or unpickled: its text
            # in a WorkerFailed of the module by its name (this one runs as ``__main__``, whose
            # WorkerFailed the rebuild could not unpickle)
            from blametrail_replay.pool import WorkerFailed as Failed

            exc = Failed(repr(exc))
        _put(out, ("error", exc))
    finally:
        out.close()


if __name__ == "__main__":
    main()
