"""Where customers' media bytes are kept, and the Redis index that finds them.

A file is stored under its content hash inside its conversation's folder,
`<conversation>/<sha256>` (the conversation token percent-encoded: no `/` or `|`), so

- the same bytes of one conversation are stored once: a redelivered message, or a photo sent
  twice, writes the same name again (a no-op);
- erasing a customer (LGPD) removes one folder (or one prefix of a bucket);
- a reader needs the conversation and the hash, both in the index.

Stores (`MediaStore`): `DirectoryStore`, a folder (WSM_MEDIA_DIR, a volume in compose), the
default; `S3Store`, an S3-compatible bucket (WSM_MEDIA_S3_BUCKET) through boto3, run in
threads (boto3 is blocking). `sweep` removes files older than the retention
(WSM_MEDIA_RETENTION_DAYS).

The index (shared/keys.py `MediaKeys`): `m:<id>` -> JSON {token, session, chat_id, sha256, size,
mimetype, filename, at, transcript?}, so `GET /api/media/<id>` finds a file and checks its
conversation (`lookup`); `c:<conv>` maps the conversation's WhatsApp message ids to media ids
(the erase; a redelivered message finds its file again). Both expire after the retention.
A media id is derived from the conversation and the hash: URL-safe, opaque, and the same for
the same file of the same conversation (idempotent), different across conversations.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import KW_ONLY, InitVar, dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import orjson

from shared.clock import now_ms
from shared.keys import MediaKeys, split_conversation_token
from shared.redis_client import RedisClient
from shared.text import as_text


@dataclass(frozen=True, slots=True)
class StoredMedia:
    id: str  # opaque, URL-safe: GET /api/media/<id>
    sha256: str
    size: int
    mimetype: str
    filename: str | None
    token: str  # the conversation it belongs to (`<session>|<chat id>`)

    def public(self) -> dict[str, Any]:
        """What a history item shows of it (no conversation: the item is in it)."""
        return {
            "id": self.id,
            "mimetype": self.mimetype,
            "filename": self.filename,
            "size": self.size,
            "sha256": self.sha256,
        }


class MediaStore(Protocol):
    async def put(
        self, conversation_token: str, data: bytes, mimetype: str, filename: str | None
    ) -> StoredMedia: ...

    async def read(self, media: StoredMedia) -> bytes: ...

    async def delete_conversation(self, conversation_token: str) -> int: ...

    async def sweep(self, older_than_ms: int) -> int: ...


class MediaTooBig(ValueError):
    """More bytes than WSM_MEDIA_MAX_BYTES: not stored."""


def media_id(conversation_token: str, sha256: str) -> str:
    """The id of a conversation's file: 32 hex characters (URL-safe, no conversation in it)."""
    digest = hashlib.blake2b(f"{conversation_token}\n{sha256}".encode(), digest_size=16)
    return digest.hexdigest()


def folder_name(conversation_token: str) -> str:
    """The conversation's folder (or key prefix): the token percent-encoded, so `/`, `|` and
    `..` never reach a path."""
    return quote(conversation_token, safe="@")


def _stored(
    token: str, data: bytes, mimetype: str, filename: str | None, max_bytes: int | None
) -> StoredMedia:
    """The file's record, before a store writes it; MediaTooBig past the store's `max_bytes`
    (None: any size)."""
    if max_bytes is not None and len(data) > max_bytes:
        raise MediaTooBig(f"{len(data)} bytes (at most {max_bytes})")
    sha = hashlib.sha256(data).hexdigest()
    return StoredMedia(
        id=media_id(token, sha),
        sha256=sha,
        size=len(data),
        mimetype=mimetype or "application/octet-stream",
        filename=filename or None,
        token=token,
    )


class DirectoryStore:
    """Files in a folder: `<root>/<conversation>/<sha256>`, written to a temporary name and
    renamed (a reader never sees half a file)."""

    def __init__(self, root: Path, *, max_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    def path_of(self, token: str, sha256: str) -> Path:
        return self.root / folder_name(token) / sha256

    async def put(
        self, conversation_token: str, data: bytes, mimetype: str, filename: str | None
    ) -> StoredMedia:
        media = _stored(conversation_token, data, mimetype, filename, self.max_bytes)
        await asyncio.to_thread(self._write, self.path_of(conversation_token, media.sha256), data)
        return media

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        if path.exists() and path.stat().st_size == len(data):
            os.utime(path)  # stored already (same hash): counts as new for the retention
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    async def read(self, media: StoredMedia) -> bytes:
        return await asyncio.to_thread(self.path_of(media.token, media.sha256).read_bytes)

    async def delete_conversation(self, conversation_token: str) -> int:
        return await asyncio.to_thread(
            self._delete_folder, self.root / folder_name(conversation_token)
        )

    @staticmethod
    def _delete_folder(folder: Path) -> int:
        if not folder.is_dir():
            return 0
        removed = 0
        for item in folder.iterdir():
            with contextlib.suppress(FileNotFoundError):
                item.unlink()
                removed += 0 if item.name.startswith(".part-") else 1
        with contextlib.suppress(OSError):
            folder.rmdir()
        return removed

    async def sweep(self, older_than_ms: int) -> int:
        return await asyncio.to_thread(self._sweep, older_than_ms / 1000)

    def _sweep(self, cutoff_seconds: float) -> int:
        if not self.root.is_dir():
            return 0
        removed = 0
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            for item in folder.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if item.stat().st_mtime < cutoff_seconds:
                        item.unlink()
                        removed += 1
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        return removed


@dataclass(eq=False)
class S3Store:
    """Objects in an S3-compatible bucket: `<prefix><conversation>/<sha256>`, with their
    content type. boto3 is blocking: every call runs in a thread."""

    bucket: str
    _: KW_ONLY
    endpoint_url: InitVar[str | None] = None
    prefix: str = ""
    max_bytes: int | None = None
    client: Any = None  # None: boto3's, for `endpoint_url`

    def __post_init__(self, endpoint_url: str | None) -> None:
        if self.client is None:
            import boto3  # imported only by a deployment that keeps media in S3

            self.client = boto3.client("s3", endpoint_url=endpoint_url)

    def key_of(self, token: str, sha256: str) -> str:
        return f"{self.prefix}{folder_name(token)}/{sha256}"

    async def put(
        self, conversation_token: str, data: bytes, mimetype: str, filename: str | None
    ) -> StoredMedia:
        media = _stored(conversation_token, data, mimetype, filename, self.max_bytes)
        await asyncio.to_thread(
            self.client.put_object,
            Bucket=self.bucket,
            Key=self.key_of(conversation_token, media.sha256),
            Body=data,
            ContentType=media.mimetype,
        )
        return media

    async def read(self, media: StoredMedia) -> bytes:
        def get() -> bytes:
            answer = self.client.get_object(
                Bucket=self.bucket, Key=self.key_of(media.token, media.sha256)
            )
            body: bytes = answer["Body"].read()
            return body

        return await asyncio.to_thread(get)

    def _keys(self, prefix: str, older_than_s: float | None = None) -> list[str]:
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            for item in page.get("Contents", ()):
                if older_than_s is None or item["LastModified"].timestamp() < older_than_s:
                    keys.append(item["Key"])
        return keys

    def _delete(self, keys: list[str]) -> int:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            chunk = keys[start : start + 1000]
            self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
            )
        return len(keys)

    async def delete_conversation(self, conversation_token: str) -> int:
        prefix = f"{self.prefix}{folder_name(conversation_token)}/"
        return await asyncio.to_thread(lambda: self._delete(self._keys(prefix)))

    async def sweep(self, older_than_ms: int) -> int:
        cutoff = older_than_ms / 1000
        return await asyncio.to_thread(lambda: self._delete(self._keys(self.prefix, cutoff)))


# --- the index -----------------------------------------------------------------------------


def _from_index(media_id_: str, value: Mapping[str, Any]) -> StoredMedia:
    return StoredMedia(
        id=media_id_,
        sha256=str(value["sha256"]),
        size=int(value["size"]),
        mimetype=str(value.get("mimetype") or "application/octet-stream"),
        filename=value.get("filename") or None,
        token=str(value["token"]),
    )


async def index_entry(redis: RedisClient, keys: MediaKeys, media_id_: str) -> dict[str, Any] | None:
    raw = await redis.get(keys.media(media_id_))
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) and "token" in value and "sha256" in value else None


async def lookup(redis: RedisClient, keys: MediaKeys, media_id_: str) -> StoredMedia | None:
    """A stored file by its id (None: unknown, erased or past the retention). The caller
    checks `token` against the conversation it serves."""
    value = await index_entry(redis, keys, media_id_)
    return None if value is None else _from_index(media_id_, value)


class MediaLibrary:
    """The store and its index together: what the engine, the sender and the API use."""

    def __init__(
        self, redis: RedisClient, keys: MediaKeys, store: MediaStore, *, retention_seconds: int
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.store = store
        self.retention_seconds = retention_seconds

    async def save(
        self,
        conversation_token: str,
        data: bytes,
        mimetype: str,
        filename: str | None,
        *,
        message_id: str = "",
    ) -> StoredMedia:
        """Store the bytes and index them (idempotent: the same file gets the same id)."""
        media = await self.store.put(conversation_token, data, mimetype, filename)
        existing = await index_entry(self.redis, self.keys, media.id)
        await self._index(media, message_id, existing or {})
        return media

    async def _index(self, media: StoredMedia, message_id: str, extra: Mapping[str, Any]) -> None:
        session, chat_id = split_conversation_token(media.token)
        value = {
            **extra,
            "token": media.token,
            "session": session,
            "chat_id": chat_id,
            "sha256": media.sha256,
            "size": media.size,
            "mimetype": media.mimetype,
            "filename": media.filename,
            "at": extra.get("at") or now_ms(),
        }
        conversation = self.keys.conversation(media.token)
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.media(media.id), orjson.dumps(value), ex=self.retention_seconds)
        # The conversation's list of media: by message when there is one, else by media id.
        pipe.hset(conversation, message_id or f"id:{media.id}", media.id)
        pipe.expire(conversation, self.retention_seconds)
        await pipe.execute()

    async def of_message(
        self, conversation_token: str, message_id: str
    ) -> tuple[StoredMedia, dict[str, Any]] | None:
        """The file a message of this conversation stored already (a redelivery), with its
        index entry (its transcript, if any)."""
        raw = await self.redis.hget(self.keys.conversation(conversation_token), message_id)
        if raw is None:
            return None
        found_id = as_text(raw)
        value = await index_entry(self.redis, self.keys, found_id)
        if value is None or value.get("token") != conversation_token:
            return None
        return _from_index(found_id, value), value

    async def note(self, media: StoredMedia, **fields: Any) -> None:
        """Add fields (a transcript) to a file's index entry."""
        value = await index_entry(self.redis, self.keys, media.id) or {}
        await self._index(media, "", {**value, **fields})

    async def lookup(self, media_id_: str) -> StoredMedia | None:
        return await lookup(self.redis, self.keys, media_id_)

    async def read(self, media: StoredMedia) -> bytes | None:
        try:
            return await self.store.read(media)
        except (FileNotFoundError, KeyError):
            return None
        except Exception as exc:  # boto3's NoSuchKey is a ClientError
            if "NoSuchKey" in type(exc).__name__ or "NoSuchKey" in str(exc):
                return None
            raise

    async def read_media(self, media: dict[str, Any]) -> bytes | None:
        """The sender's MediaReader (engine/sender.py): a file's bytes by its `id`."""
        stored = await self.lookup(str(media.get("id") or ""))
        return None if stored is None else await self.read(stored)

    async def forget_conversation(self, conversation_token: str) -> int:
        """The erase (LGPD): every file of the conversation and its index entries."""
        conversation = self.keys.conversation(conversation_token)
        ids = {as_text(v) for v in await self.redis.hvals(conversation)}
        pipe = self.redis.pipeline(transaction=False)
        for found in sorted(ids):
            pipe.delete(self.keys.media(found))
        pipe.delete(conversation)
        gone = sum(int(n) for n in await pipe.execute())
        return gone + await self.store.delete_conversation(conversation_token)

    async def sweep(self, *, now: int | None = None) -> int:
        """Files older than the retention go (their index entries expire by themselves)."""
        current = now_ms() if now is None else now
        return await self.store.sweep(int(current - self.retention_seconds * 1000))
