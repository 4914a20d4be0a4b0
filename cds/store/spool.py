"""The durable local spool: where a record goes when the database cannot take it.

Each process appends to a file of its own (`spool-<pid>-<token>.jsonl`, one record a
line, written and fsynced before the answer is sent). A drain claims a file by renaming
it, moves its records into the database (records already there are skipped, so a drain
interrupted half-way is simply repeated), and deletes it. A line cut short by a crash is
kept aside in a `.corrupt` file, a record the database refuses (not an outage: a value it
will never take) in a `.rejected` one — never silently dropped, never holding back the
records after it.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

import msgspec

from cds.store.records import AuditRecord

log = logging.getLogger("cds.store.spool")

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(AuditRecord)


class Spool:
    """Append-only files of records not yet in the database."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None

    def append(self, record: AuditRecord) -> None:
        """Write the record durably (raises OSError when the disk cannot take it)."""
        line = _ENCODER.encode(record) + b"\n"
        with self._lock:
            if self._fd is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                name = f"spool-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
                self._path = self.directory / name
                self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError("the spool file took only part of the record")
            os.fsync(self._fd)

    def pending(self) -> list[Path]:
        """Spool files waiting to be drained (of every process)."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("spool-*.jsonl"))

    def _rotate(self) -> None:
        """New appends go to a new file, so that the current one can be drained."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd, self._path = None, None

    def drain(
        self,
        write: Callable[[list[AuditRecord]], None],
        refused: Callable[[Exception], bool] = lambda _: False,
    ) -> int:
        """Move every spooled record into the database with `write` (which must skip
        records already there); returns how many were moved. A file whose write fails
        stays for the next drain — unless the database `refused` the records (a value it
        will never take, not an outage): then they are written one at a time, and those it
        refuses are kept aside in a `.rejected` file, so that one record cannot hold back
        the others for ever."""
        self._rotate()
        self._recover_abandoned()
        moved = 0
        for path in self.pending():
            claimed = path.with_name(f"{path.name}.draining-{os.getpid()}")
            try:
                path.rename(claimed)
            except FileNotFoundError:
                continue  # another process claimed it
            records, corrupt = _read(claimed)
            try:
                rejected = _write_all(records, write, refused)
            except Exception:
                claimed.rename(path)  # try again next time
                raise
            _keep_aside(path.with_suffix(".corrupt"), corrupt, "cannot be read")
            _keep_aside(
                path.with_suffix(".rejected"),
                [_ENCODER.encode(r) + b"\n" for r in rejected],
                "were refused by the database",
            )
            claimed.unlink()
            moved += len(records) - len(rejected)
        return moved

    def _recover_abandoned(self) -> None:
        """Files claimed by a process that died mid-drain go back to the queue."""
        if not self.directory.is_dir():
            return
        for claimed in self.directory.glob("spool-*.jsonl.draining-*"):
            pid = int(claimed.name.rsplit("-", 1)[1])
            if not _alive(pid):
                claimed.rename(claimed.with_name(claimed.name.split(".draining-")[0]))


def _write_all(
    records: list[AuditRecord],
    write: Callable[[list[AuditRecord]], None],
    refused: Callable[[Exception], bool],
) -> list[AuditRecord]:
    """Write the records, together or (when the database refuses the batch) one at a
    time; returns those it refused. Any other failure is raised."""
    if not records:
        return []
    try:
        write(records)
        return []
    except Exception as exc:
        if not refused(exc):
            raise
    rejected = []
    for record in records:
        try:
            write([record])
        except Exception as exc:
            if not refused(exc):
                raise
            rejected.append(record)
    return rejected


def _keep_aside(aside: Path, lines: list[bytes], why: str) -> None:
    """Keep lines the database will not take, appended to `aside`, and say so (how many
    and where; never what they hold)."""
    if not lines:
        return
    with aside.open("ab") as out:
        out.write(b"".join(lines))
        out.flush()
        os.fsync(out.fileno())
    log.error(
        f"spooled records that {why} were kept aside",
        extra={"cards": len(lines), "query": aside.name},
    )


def _read(path: Path) -> tuple[list[AuditRecord], list[bytes]]:
    records: list[AuditRecord] = []
    corrupt: list[bytes] = []
    for line in path.read_bytes().splitlines(keepends=True):
        if not line.strip():
            continue
        try:
            records.append(_DECODER.decode(line))
        except msgspec.DecodeError:
            corrupt.append(line)
    return records, corrupt


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
