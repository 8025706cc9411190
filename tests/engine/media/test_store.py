"""The media stores (a folder; an S3 bucket, moto's server standing in for S3) and their
index on a real Redis."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.media.store import (
    DirectoryStore,
    MediaLibrary,
    MediaTooBig,
    S3Store,
    folder_name,
    lookup,
    media_id,
)
from shared.keys import MediaKeys

ANA = "default|5511987650001@c.us"
BIA = "default|5511987650002@c.us"
JPEG = b"\xff\xd8\xff\xe0" + b"photo" * 100


def test_folder_names_never_leave_the_root() -> None:
    assert "/" not in folder_name("a/../b|c@c.us")
    assert folder_name(ANA) == "default%7C5511987650001@c.us"
    assert media_id(ANA, "ab") != media_id(BIA, "ab")
    assert media_id(ANA, "ab") == media_id(ANA, "ab")


async def test_directory_store_puts_under_the_hash_once(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path, max_bytes=10_000)
    first = await store.put(ANA, JPEG, "image/jpeg", None)
    again = await store.put(ANA, JPEG, "image/jpeg", None)
    assert first == again
    assert first.sha256 == hashlib.sha256(JPEG).hexdigest() and first.size == len(JPEG)
    folder = tmp_path / folder_name(ANA)
    assert [p.name for p in folder.iterdir()] == [first.sha256]
    assert await store.read(first) == JPEG
    with pytest.raises(MediaTooBig):
        await store.put(ANA, b"x" * 10_001, "image/jpeg", None)
    assert [p.name for p in folder.iterdir()] == [first.sha256]  # nothing of it written


async def test_directory_store_deletes_a_conversation_and_sweeps_old_files(
    tmp_path: Path,
) -> None:
    store = DirectoryStore(tmp_path)
    ana = await store.put(ANA, JPEG, "image/jpeg", None)
    old = await store.put(BIA, b"old", "text/plain", "a.txt")
    new = await store.put(BIA, b"new", "text/plain", "b.txt")
    long_ago = time.time() - 100 * 86400
    os.utime(tmp_path / folder_name(BIA) / old.sha256, (long_ago, long_ago))
    assert await store.sweep(int((time.time() - 90 * 86400) * 1000)) == 1
    assert await store.read(new) == b"new"
    with pytest.raises(FileNotFoundError):
        await store.read(old)
    assert await store.delete_conversation(ANA) == 1
    assert not (tmp_path / folder_name(ANA)).exists()
    with pytest.raises(FileNotFoundError):
        await store.read(ana)
    assert await store.read(new) == b"new"  # the other customer's file stays


# --- S3 (moto's server as the stand-in) ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def s3_endpoint(aws_env: None) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


async def test_s3_store_puts_reads_deletes_and_sweeps(s3_endpoint: str) -> None:
    import boto3

    client: Any = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="media")
    store = S3Store("media", endpoint_url=s3_endpoint, max_bytes=10_000)
    ana = await store.put(ANA, JPEG, "image/jpeg", "foto.jpg")
    assert await store.put(ANA, JPEG, "image/jpeg", "foto.jpg") == ana
    bia = await store.put(BIA, b"%PDF-1.4", "application/pdf", "exame.pdf")
    head = client.head_object(Bucket="media", Key=store.key_of(ANA, ana.sha256))
    assert head["ContentType"] == "image/jpeg"
    assert await store.read(ana) == JPEG
    with pytest.raises(MediaTooBig):
        await store.put(ANA, b"x" * 10_001, "image/jpeg", None)
    assert await store.delete_conversation(ANA) == 1
    listed = client.list_objects_v2(Bucket="media").get("Contents", [])
    assert [o["Key"] for o in listed] == [store.key_of(BIA, bia.sha256)]
    assert await store.sweep(int(time.time() * 1000) - 3_600_000) == 0  # not old yet
    assert await store.sweep(int(time.time() * 1000) + 60_000) == 1
    assert client.list_objects_v2(Bucket="media").get("KeyCount") == 0


# --- the index ---------------------------------------------------------------------------------


async def test_library_indexes_finds_and_forgets(aredis, key_prefix, tmp_path: Path) -> None:
    keys = MediaKeys(key_prefix)
    library = MediaLibrary(aredis, keys, DirectoryStore(tmp_path), retention_seconds=3600)
    photo = await library.save(ANA, JPEG, "image/jpeg", None, message_id="false_x_1")
    other = await library.save(BIA, JPEG, "image/jpeg", None, message_id="false_y_1")
    assert photo.id != other.id  # the same bytes in two conversations: two entries
    found = await lookup(aredis, keys, photo.id)
    assert found == photo and found.token == ANA
    assert await library.read_media({"id": photo.id}) == JPEG
    assert 0 < await aredis.ttl(keys.media(photo.id)) <= 3600
    known = await library.of_message(ANA, "false_x_1")
    assert known is not None and known[0] == photo
    assert await library.of_message(BIA, "false_x_1") is None
    removed = await library.forget_conversation(ANA)
    assert removed == 3  # its index entry, its conversation hash, its file
    assert await lookup(aredis, keys, photo.id) is None
    assert await library.read_media({"id": photo.id}) is None
    assert not (tmp_path / folder_name(ANA)).exists()
    assert await lookup(aredis, keys, other.id) == other  # the other customer's stays
    assert await library.read_media({"id": other.id}) == JPEG
    assert await lookup(aredis, keys, "nope") is None
