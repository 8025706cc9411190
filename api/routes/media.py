"""Stored files (customers' photos, voice notes and documents, and the files agents sent), and
an agent sending a file.

- `GET /api/media/{media_id}`: the file's bytes with its stored content type. It takes the
  operator's bearer token OR an attendant's console session (api/deps.py
  `operator_or_console`): the console's pages load images and audio from it.
- `GET /api/conversations/{session}/{chat_id}/media/{media_id}`: the same, only when the file
  belongs to that conversation (404 otherwise): for a client that wants the conversation
  checked on every read, as "a customer's media is reachable only through their
  conversation" reads.

  Media ids are opaque (32 hex characters, derived from the conversation and the file's hash,
  never the customer's number); they reach a client only inside that conversation's history.
  Both answer 401 without credentials, 422 for a malformed id, 404 for an unknown, erased or
  expired one, and, to an attendant's console session, 404 for a file of a conversation the
  console does not show them (not in the line, not theirs, not one they handled). Only
  images, audio and video are served `inline`; anything else is an
  `attachment` (a download, with its file name), always with `X-Content-Type-Options: nosniff`
  and a sandboxing Content-Security-Policy, so a stored file never runs as a page of ours.

- `POST /api/conversations/{session}/{chat_id}/media` (multipart: `file`, `agent_id`, optional
  `agent_name` and `caption`, nothing else; bearer only): api/media_send.py `send_media`, which
  the console calls too. 201 sent, 202 queued (no outcome within WSM_MEDIA_SEND_WAIT_SECONDS),
  422 `waha_plus_required` (WAHA Core does not send files), 413/415/422 for a file that may not
  be sent, 422 `idempotency_key_reused` for a key sent before with another file, 422
  `invalid_form` for a body that is not one whole multipart form (cut short included), 404 for
  a conversation that does not exist; every refusal stores and queues nothing.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import FormData, UploadFile

from api.deps import Parts
from api.forms import whole_form
from api.media_send import MediaRefused, send_media
from api.routes.conversations import IdempotencyKey
from api.validation import AGENT_ID, NAME_MAX, display_name
from engine.media.store import StoredMedia
from shared.keys import conversation_token

# The reads: their own router, authorised by token or console session (api/app.py).
reads = APIRouter(tags=["media"])
# Sending: under the operator API's bearer token, like the other commands.
router = APIRouter(tags=["media"])

MEDIA_ID = re.compile(r"[0-9a-f]{32}")
# Types a browser may show in place; anything else is downloaded.
INLINE = re.compile(r"(image/(jpeg|png|gif|webp)|audio/[a-z0-9.+-]+|video/[a-z0-9.+-]+)")
# A stored file is data, never a page: no scripts, no plugins, no frames, even if opened alone.
MEDIA_CSP = "default-src 'none'; img-src 'self'; media-src 'self'; sandbox"
# Room for the multipart envelope and the small fields around the file.
FORM_OVERHEAD = 64 * 1024
# The form's fields: anything else (a typo, `captoin`) is refused rather than dropped unseen.
FORM_FIELDS = ("file", "agent_id", "agent_name", "caption")

_READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The stored bytes, with the stored content type.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    206: {"description": "The bytes a `Range: bytes=first-last` header asked for."},
    401: {"description": "Neither the bearer token nor a console session."},
    404: {
        "description": "No such file (unknown, erased, past the retention, or not this "
        "conversation's)."
    },
    416: {"description": "A range that starts past the file's end."},
    422: {"description": "Not a media id."},
}


# What may not stand in a header value's quoted string: control characters (a name WAHA passed
# on with a line break would break the header: the server refuses to send it), quotes, and the
# "?" the ASCII fallback puts for what is not ASCII.
_UNSAFE_IN_NAME = re.compile(r'[\x00-\x1f\x7f"?\\]')
# A content type as stored: type/subtype and parameters, nothing that could end the header.
_CONTENT_TYPE = re.compile(r"[\w.+-]+/[\w.+-]+(\s*;[^\x00-\x1f\x7f]*)?")


# One byte range (RFC 9110 14.1.2): "bytes=first-last", "bytes=first-" or "bytes=-suffix".
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (first, last) bytes a `Range` header asks for, or None to send the whole file (no
    header, several ranges, or one we do not understand: a server may always answer 200).
    Raises HTTPException 416 for a range that starts past the end."""
    found = _RANGE.fullmatch((header or "").strip())
    if found is None or not (found[1] or found[2]):
        return None
    if not found[1]:  # the last N bytes
        suffix = int(found[2])
        if suffix == 0:
            raise _unsatisfiable(size)
        return max(0, size - suffix), size - 1
    first = int(found[1])
    last = min(int(found[2]), size - 1) if found[2] else size - 1
    if first >= size or first > last:
        raise _unsatisfiable(size)
    return first, last


def _unsatisfiable(size: int) -> HTTPException:
    return HTTPException(416, "range not satisfiable", headers={"Content-Range": f"bytes */{size}"})


def _disposition(kind: str, filename: str) -> str:
    # RFC 6266: an ASCII fallback and the UTF-8 name (percent-encoded: any character is safe).
    fallback = _UNSAFE_IN_NAME.sub("_", filename.encode("ascii", "replace").decode())
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


async def _serve(parts: Parts, request: Request, media_id: str, token: str | None) -> Response:
    if not MEDIA_ID.fullmatch(media_id):
        raise HTTPException(422, "not a media id: 32 of 0-9 a-f")
    stored: StoredMedia | None = await parts.media.lookup(media_id)
    if stored is None or (token is not None and stored.token != token):
        raise HTTPException(404, "no such media")
    viewer = getattr(request.state, "console_viewer", None)
    if viewer is not None and not await request.app.state.console.reads.may_view(
        viewer, stored.token
    ):
        # An attendant reads only the files of conversations the console shows them (the
        # line, their own, those they handled; an admin every one). 404, as for an id that
        # does not exist: the answer tells nothing about another customer's files.
        raise HTTPException(404, "no such media")
    data = await parts.media.read(stored)
    if data is None:
        raise HTTPException(404, "no such media")
    mimetype = stored.mimetype if _CONTENT_TYPE.fullmatch(stored.mimetype) else ""
    mimetype = mimetype or "application/octet-stream"
    base = mimetype.split(";", 1)[0].strip().lower()
    inline = INLINE.fullmatch(base) is not None
    filename = stored.filename or f"{stored.id}"
    headers = {
        "Content-Disposition": _disposition("inline" if inline else "attachment", filename),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": MEDIA_CSP,
        # The id names these exact bytes (a content hash); an erase makes the route 404.
        "Cache-Control": "private, max-age=300",
        # Audio and video players ask for parts (Safari plays nothing without 206 answers,
        # and seeking needs them everywhere).
        "Accept-Ranges": "bytes",
    }
    wanted = _byte_range(request.headers.get("range"), len(data))
    if wanted is None:
        return Response(content=data, media_type=mimetype, headers=headers)
    first, last = wanted
    headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
    return Response(
        content=data[first : last + 1], status_code=206, media_type=mimetype, headers=headers
    )


@reads.get("/media/{media_id}", responses=_READ_RESPONSES, response_class=Response)
async def get_media(parts: Parts, request: Request, media_id: str) -> Response:
    """A stored file (the history's `media.id`): bearer token or console session."""
    return await _serve(parts, request, media_id, None)


@reads.get(
    "/conversations/{session}/{chat_id}/media/{media_id}",
    responses=_READ_RESPONSES,
    response_class=Response,
)
async def get_conversation_media(
    parts: Parts, request: Request, session: str, chat_id: str, media_id: str
) -> Response:
    """A stored file of this conversation only (404 when it is another conversation's)."""
    return await _serve(parts, request, media_id, conversation_token(session, chat_id))


_SEND_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "agent_id"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "image/jpeg|png|webp|gif, application/pdf, "
                            "office documents, text/plain, text/csv, or audio/ogg (opus) "
                            "for a voice note; at most WSM_MEDIA_MAX_BYTES.",
                        },
                        "agent_id": {"type": "string", "maxLength": 64},
                        "agent_name": {
                            "type": "string",
                            "maxLength": 100,
                            "description": "Trimmed; blank: agent_id.",
                        },
                        "caption": {"type": "string", "maxLength": 1024},
                    },
                }
            }
        },
    }
}
_SEND_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"description": "Sent: WAHA accepted the file."},
    202: {
        "description": "Queued: no outcome yet within WSM_MEDIA_SEND_WAIT_SECONDS; it will "
        "be sent (exactly once, through the outbox)."
    },
    404: {"description": "No such conversation."},
    413: {"description": "The file is larger than WSM_MEDIA_MAX_BYTES (nothing stored)."},
    415: {"description": "A type that may not be sent, or bytes that are not that type."},
    422: {
        "description": '`{"error": "waha_plus_required"}`: this WAHA (Core) does not send '
        "files; or the form is incomplete or wrong (no file, no agent_id, a caption too "
        "long, a field it does not take: `unknown_field`; a body that is not one whole "
        "multipart form, cut short included: `invalid_form`); or `idempotency_key_reused`: the "
        "Idempotency-Key was sent before with another file or caption (nothing stored)."
    },
    502: {"description": "WAHA refused the file for good (dead letter)."},
}


def _refused(refusal: MediaRefused) -> JSONResponse:
    return JSONResponse(refusal.body(), status_code=refusal.status)


def _checked(form: FormData) -> tuple[UploadFile, dict[str, str]]:
    """The form's file and its text fields (absent ones blank); `MediaRefused` 422 for a form
    without a file, with a field it does not take, or with a malformed agent id or name."""
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise MediaRefused(422, "no_file", "the form has no `file`")
    if unknown := sorted(set(form) - set(FORM_FIELDS)):
        raise MediaRefused(
            422,
            "unknown_field",
            f"unknown form field {', '.join(unknown)[:200]}: the form takes "
            + ", ".join(FORM_FIELDS),
        )
    fields = {
        name: value if isinstance(value := form.get(name), str) else "" for name in FORM_FIELDS[1:]
    }
    if not AGENT_ID.fullmatch(fields["agent_id"]):
        raise MediaRefused(
            422,
            "invalid_agent_id",
            "agent_id: 1-64 of A-Z a-z 0-9 . _ @ + -, starting with one of A-Z a-z 0-9",
        )
    agent_name = display_name(fields["agent_name"])
    if agent_name is not None and len(agent_name) > NAME_MAX:
        raise MediaRefused(422, "invalid_agent_name", f"at most {NAME_MAX} characters")
    return upload, fields


@router.post(
    "/conversations/{session}/{chat_id}/media",
    status_code=201,
    openapi_extra=_SEND_BODY,
    responses=_SEND_RESPONSES,
    response_class=JSONResponse,
)
async def post_media(
    parts: Parts,
    request: Request,
    session: str,
    chat_id: str,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """An agent sends an image, a document or a voice note (the conversation becomes theirs).
    Waits for WAHA's outcome for at most WSM_MEDIA_SEND_WAIT_SECONDS."""
    settings = parts.settings
    # The form is read here, after the token and the conversation were checked (a route
    # parameter would have FastAPI read the whole upload first), and a body that announces
    # more than a file may be is refused before it is read.
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.media_max_bytes + FORM_OVERHEAD:
        return _refused(
            MediaRefused(
                413, "file_too_large", f"the file is larger than {settings.media_max_bytes} bytes"
            )
        )
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return _refused(MediaRefused(422, "no_file", "send the file as multipart/form-data"))
    try:
        async with whole_form(request, max_files=1, max_fields=10) as form:
            upload, fields = _checked(form)
            data = await upload.read(settings.media_max_bytes + 1)
            mimetype = upload.content_type or ""
            filename = upload.filename
    except MediaRefused as refusal:
        return _refused(refusal)
    agent_name = display_name(fields["agent_name"])
    try:
        sent = await send_media(
            parts.media_send,
            session=session,
            chat_id=chat_id,
            agent_id=fields["agent_id"],
            agent_name=agent_name,
            data=data,
            mimetype=mimetype,
            filename=filename,
            caption=fields["caption"],
            idempotency_key=idempotency_key,
        )
    except MediaRefused as refusal:
        return _refused(refusal)
    headers = {"Idempotent-Replayed": "true"} if sent.replayed else None
    return JSONResponse(sent.body(), status_code=sent.http_status, headers=headers)
