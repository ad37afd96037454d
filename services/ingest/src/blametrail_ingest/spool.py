"""A durable local FIFO of Kafka records, for webhooks accepted while Kafka is away.

Records go to append-only segment files (``seg-<n>.log``), framed as
``u32 length | u32 crc32 | (u32 key length | key | value)``, and are fsync'd before
:meth:`Spool.append_many` returns, so a 200 answered after it survives a crash or restart. The
drainer reads them back in order; how far it got in the oldest segment is kept in
``seg-<n>.pos`` (fsync'd), and a segment is deleted once forwarded. A crash while draining
resends a few records: duplicates are harmless downstream, losses are impossible.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Spool", "SpoolError", "SpoolFull"]

log = logging.getLogger(__name__)

_HEAD = struct.Struct(">II")  # frame length, crc32 of the frame payload
SEGMENT_BYTES = 16 * 1024 * 1024


class SpoolError(Exception):
    """The spool cannot take the record (disk error)."""


class SpoolFull(SpoolError):
    """Taking the record would exceed the configured bound."""


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    segment: int
    end: int  # byte offset just past this record in its segment
    key: bytes
    value: bytes


class Spool:
    """Thread-offloaded, lock-serialized appends; one reader (the drainer).

    ``written_at`` tells when a spooled value was accepted (epoch seconds, ``None`` if it cannot
    say); it dates records a previous process left behind, for :meth:`oldest_age_s`.
    """

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        written_at: Callable[[bytes], float | None] | None = None,
    ) -> None:
        self.directory, self.max_bytes = directory, max_bytes
        self._lock = asyncio.Lock()
        self._count_lock = threading.Lock()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._cut_torn_tail()
        self._pending = (
            self._scan_pending()
        )  # kept in memory: is_empty() is on every request's path
        # (segment, end offset, wall time) of each append round not yet fully forwarded
        self._rounds: deque[tuple[int, int, float]] = deque()
        if self._pending:
            self._rounds.append(self._leftover_round(written_at))

    def _leftover_round(
        self, written_at: Callable[[bytes], float | None] | None
    ) -> tuple[int, int, float]:
        """One round standing for what a previous process spooled, dated by its oldest record
        (else by the oldest segment's modification time, which can only make it look younger)."""
        first = self.read_batch(1)  # (drops segments a previous process fully forwarded)
        segs = self._segments()
        when = written_at(first[0].value) if first and written_at is not None else None
        if when is None:
            when = min(self._path(n).stat().st_mtime for n in segs)
        return segs[-1], self._path(segs[-1]).stat().st_size, when

    # -- state ------------------------------------------------------------------------------
    def _segments(self) -> list[int]:
        return sorted(int(p.stem[4:]) for p in self.directory.glob("seg-*.log"))

    def _path(self, n: int, suffix: str = ".log") -> Path:
        return self.directory / f"seg-{n:012d}{suffix}"

    def _position(self, n: int) -> int:
        try:
            return int(self._path(n, ".pos").read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _cut_torn_tail(self) -> None:
        """A process killed in the middle of an append leaves a torn frame at the end of the
        newest segment (never acknowledged: the fsync had not returned). Appends after it would
        sit behind a frame the reader cannot pass, never forwarded: cut it off first."""
        segs = self._segments()
        if not segs:
            return
        path = self._path(segs[-1])
        with open(path, "r+b") as f:
            good = self._position(segs[-1])
            f.seek(good)
            while True:
                head = f.read(_HEAD.size)
                if len(head) < _HEAD.size:
                    break
                length, crc = _HEAD.unpack(head)
                payload = f.read(length)
                if len(payload) < length or zlib.crc32(payload) != crc:
                    break
                good += _HEAD.size + length
            torn = os.fstat(f.fileno()).st_size - good
            if torn > 0:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
                log.warning("torn spool write cut off", extra={"segment": path.name, "bytes": torn})

    def _scan_pending(self) -> int:
        return sum(self._path(n).stat().st_size - self._position(n) for n in self._segments())

    def pending_bytes(self) -> int:
        """Bytes not yet forwarded (the spool-depth metric)."""
        return self._pending

    def is_empty(self) -> bool:
        return self._pending == 0

    def oldest_age_s(self, now: float | None = None) -> float:
        """Seconds since the oldest record not yet forwarded was spooled; 0 when empty."""
        with self._count_lock:
            if not self._pending or not self._rounds:
                return 0.0
            oldest = self._rounds[0][2]
        return max((time.time() if now is None else now) - oldest, 0.0)

    def writable(self) -> bool:
        return os.access(self.directory, os.W_OK)

    # -- append -----------------------------------------------------------------------------
    async def append_many(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Durably append records in order with one fsync (group commit); on an error none of
        them counts as taken, and a partial write is cut off again so later frames stay readable.
        Raises :class:`SpoolFull` or :class:`SpoolError`."""
        async with self._lock:
            await asyncio.to_thread(self._append, records)

    def _append(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        frames = []
        for key, value in records:
            payload = struct.pack(">I", len(key)) + key + value
            frames.append(_HEAD.pack(len(payload), zlib.crc32(payload)) + payload)
        data = b"".join(frames)
        if self.pending_bytes() + len(data) > self.max_bytes:
            raise SpoolFull(f"spool holds {self.pending_bytes()} bytes, bound {self.max_bytes}")
        segs = self._segments()
        n = (
            segs[-1]
            if segs and self._path(segs[-1]).stat().st_size < SEGMENT_BYTES
            else (segs[-1] + 1 if segs else 1)
        )
        try:
            new = not self._path(n).exists()
            fd = os.open(self._path(n), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                start = os.lseek(fd, 0, os.SEEK_END)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)
                    raise
            finally:
                os.close(fd)
            if new:
                _fsync_dir(self.directory)
        except OSError as exc:
            raise SpoolError(f"spool write failed: {exc.strerror}") from exc
        with self._count_lock:
            self._pending += len(data)
            self._rounds.append((n, start + len(data), time.time()))

    # -- drain ------------------------------------------------------------------------------
    def read_batch(self, max_records: int = 500) -> list[SpooledRecord]:
        """The next records in order, from the oldest segment (blocking I/O: call in a thread)."""
        segs = self._segments()
        if not segs:
            return []
        n = segs[0]
        pos = self._position(n)
        out: list[SpooledRecord] = []
        with open(self._path(n), "rb") as f:
            f.seek(pos)
            while len(out) < max_records:
                head = f.read(_HEAD.size)
                if len(head) < _HEAD.size:
                    break  # end of segment, or a torn final write that was never acknowledged
                length, crc = _HEAD.unpack(head)
                payload = f.read(length)
                if len(payload) < length or zlib.crc32(payload) != crc:
                    break
                klen = struct.unpack(">I", payload[:4])[0]
                pos += _HEAD.size + length
                out.append(SpooledRecord(n, pos, payload[4 : 4 + klen], payload[4 + klen :]))
        if not out and len(segs) > 1:  # fully drained and a newer segment exists: drop this one
            self._drop(n)
            return self.read_batch(max_records)
        return out

    def mark_forwarded(self, record: SpooledRecord) -> None:
        """Persist that every record up to ``record`` reached Kafka."""
        forwarded = record.end - self._position(record.segment)
        with self._count_lock:  # the writer's thread may be adding at the same time
            self._pending = max(self._pending - forwarded, 0)
            done = (record.segment, record.end)
            while self._rounds and self._rounds[0][:2] <= done:
                self._rounds.popleft()
        pos_path = self._path(record.segment, ".pos")
        tmp = pos_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(str(record.end))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, pos_path)
        if (
            record.end >= self._path(record.segment).stat().st_size
            and self._segments()[-1] != record.segment
        ):
            self._drop(record.segment)

    def _drop(self, n: int) -> None:
        self._path(n).unlink(missing_ok=True)
        self._path(n, ".pos").unlink(missing_ok=True)
        _fsync_dir(self.directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
