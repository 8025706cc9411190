"""Reading an uploaded file's multipart form, for the API's media route and the console's.

Starlette's own `request.form()` answers an unreadable body with its own 400
`{"detail": ...}`, and takes a body cut short before its closing boundary as it is
(python-multipart's `finalize` checks nothing): the parts before the cut would be read as the
whole form, a file sent without the caption that came after it. Both routes read the form here
instead, and refuse such a body as `MediaRefused` 422 `invalid_form`, nothing read from it used.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import Request
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser

from api.media_send import MediaRefused

# What a body that is not a readable form is told, for Starlette's two terse messages; its
# others ("Too many files. Maximum number of files is 1.") say it already.
_UNREADABLE = {
    "Missing boundary in multipart.": "the Content-Type names no multipart boundary",
    "Invalid multipart data.": "its parts are not separated by the boundary its Content-Type names",
}
CUT_SHORT = "it ends before its closing boundary (cut short?)"


class _FormParser(MultiPartParser):
    """Starlette's multipart parser, noting whether the body reached its closing boundary."""

    closed = False

    def on_end(self) -> None:  # called at the closing boundary only
        self.closed = True


def _invalid(reason: str) -> MediaRefused:
    return MediaRefused(422, "invalid_form", f"not a readable multipart form: {reason}")


@contextlib.asynccontextmanager
async def whole_form(
    request: Request, *, max_files: int, max_fields: int
) -> AsyncIterator[FormData]:
    """The request's multipart form, closed after; `MediaRefused` 422 `invalid_form` for a body
    that is not one whole form (no boundary, another boundary, too many files or fields, a part
    without a name, cut short)."""
    try:
        async with contextlib.aclosing(request.stream()) as stream:
            parser = _FormParser(
                request.headers, stream, max_files=max_files, max_fields=max_fields
            )
            form = await parser.parse()
    except MultiPartException as exc:
        reason = _UNREADABLE.get(exc.message, exc.message[:1].lower() + exc.message[1:])
        raise _invalid(reason.rstrip(".")) from exc
    try:
        if not parser.closed:
            raise _invalid(CUT_SHORT)
        yield form
    finally:
        await form.close()
