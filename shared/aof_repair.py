"""Before Redis starts: cut back a transaction that a crash tore off the end of the append-only
file, so it can never cost the writes Redis acknowledges after it.

    python -m shared.aof_repair <data dir> [command ...]   repair, then exec the command

Why: a crash in the middle of writing a MULTI/EXEC block (our Lua scripts' writes are stored as
one) leaves the AOF ending inside it. Redis loads such a file by cutting off only the partial
command, and leaves the MULTI open; the writes it acknowledges next (fsync'd: appendfsync
always) are appended after that MULTI, and the restart after reverts them together with the
torn transaction. Seen with Redis 7.0 (tests/shared/test_aof_repair.py); fixed in Valkey by
valkey-io/valkey#4342 (2026). Here the file is cut back before the torn MULTI instead.

Only a tail cut short, what a crash leaves, is repaired: the last file of the manifest (the only
one Redis appends to), and only when its bytes after the last whole write are the beginning of
a command (or an open MULTI). Anything else is damage no crash explains: left as it is, for
Redis to refuse at start and for an operator to look at (docs/operations.md, Persistence).

`make run`'s and the tests' Redis start through it (shared/embedded_redis.py); the compose Redis
has it run first, by a one-shot service on its volume (compose.yaml, `redis-repair`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MANIFEST = Path("appendonlydir") / "appendonly.aof.manifest"


class _Cut(Exception):
    """The file ends inside a command."""


class _Damaged(Exception):
    """Bytes that are no command's."""


def _line(data: bytes, pos: int, prefix: bytes) -> tuple[int, int]:
    """The number after `prefix` on the line at `pos`, and where the next line starts."""
    if pos >= len(data):
        raise _Cut
    if data[pos : pos + 1] != prefix:
        raise _Damaged
    end = data.find(b"\r\n", pos)
    if end < 0:
        rest = data[pos + 1 :]
        if rest.removesuffix(b"\r").isdigit() or rest in (b"", b"\r"):
            raise _Cut  # "*3", "$1\r": the line was being written
        raise _Damaged
    digits = data[pos + 1 : end]
    if not digits.isdigit():
        raise _Damaged
    return int(digits), end + 2


def _command(data: bytes, pos: int) -> tuple[bytes, int]:
    """The command's name (upper case) and where the next command starts."""
    count, pos = _line(data, pos, b"*")
    name = b""
    for n in range(count):
        size, pos = _line(data, pos, b"$")
        end = pos + size
        if end + 2 > len(data):
            if end + 1 == len(data) and data[end:] != b"\r":
                raise _Damaged  # the payload is whole, and what follows it is no line end
            raise _Cut
        if data[end : end + 2] != b"\r\n":
            raise _Damaged
        if n == 0:
            name = data[pos:end].upper()
        pos = end + 2
    return name, pos


def torn_tail(data: bytes) -> int | None:
    """Where a file with a torn tail must be cut to (the end of its last whole write outside a
    transaction), or None when it has no torn tail (whole, or damaged otherwise)."""
    pos = safe = 0
    in_multi = False
    try:
        while pos < len(data):
            if data[pos : pos + 1] == b"#":  # an annotation (aof-timestamp-enabled)
                end = data.find(b"\r\n", pos)
                if end < 0:
                    raise _Cut
                pos = end + 2
            else:
                name, pos = _command(data, pos)
                if name == b"MULTI":
                    in_multi = True
                elif name == b"EXEC":
                    in_multi = False
            if not in_multi:
                safe = pos
    except _Cut:
        return safe
    except _Damaged:
        return None
    return safe if in_multi else None


def last_file(data_dir: Path) -> Path | None:
    """The manifest's last file, if it is an incremental one (the only file Redis appends to;
    a base file is written whole by a rewrite)."""
    manifest = data_dir / MANIFEST
    if not manifest.is_file():
        return None
    lines = [line.split() for line in manifest.read_text("utf-8").splitlines() if line.strip()]
    if not lines:
        return None
    fields = dict(zip(lines[-1][::2], lines[-1][1::2], strict=False))
    if fields.get("type") != "i" or "file" not in fields:
        return None
    return manifest.parent / fields["file"]


def repair(data_dir: Path) -> int:
    """Cut a torn tail off the AOF in `data_dir`; the number of bytes cut (0: nothing to do)."""
    path = last_file(data_dir)
    if path is None or not path.is_file():
        return 0
    data = path.read_bytes()
    cut = torn_tail(data)
    if cut is None or cut == len(data):
        return 0
    with path.open("r+b") as file:
        file.truncate(cut)
        os.fsync(file.fileno())
    return len(data) - cut


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m shared.aof_repair <data dir> [command ...]", file=sys.stderr)
        return 2
    data_dir, command = Path(argv[0]), argv[1:]
    cut = repair(data_dir)
    if cut:
        print(
            f"aof_repair: {data_dir / MANIFEST}'s last file ended cut short (a crash): "
            f"cut back {cut} bytes to its last whole write",
            file=sys.stderr,
        )
    if command:
        os.execvp(command[0], command)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
