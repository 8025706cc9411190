"""The part of WAHA's REST API that wsm uses, with WAHA's status codes and shapes.

NestJS answers 201 to every POST that succeeds; a POST handler that returns nothing answers
201 with an empty body (sendSeen with message ids).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from wsm.waha_sim.web import JSON, json_object, sim_of

router = APIRouter()


@router.get("/ping", tags=["WAHA"])
async def ping() -> JSON:
    return JSON({"message": "pong"})


@router.post("/api/sendText", tags=["WAHA"])
async def send_text(request: Request) -> JSON:
    body = await json_object(request)
    return JSON(await sim_of(request).send_text(body), status_code=201)


@router.post("/api/sendImage", tags=["WAHA"])
@router.post("/api/sendFile", tags=["WAHA"])
@router.post("/api/sendVoice", tags=["WAHA"])
async def send_file(request: Request) -> JSON:
    body = await json_object(request)
    return JSON(await sim_of(request).send_file(body), status_code=201)


@router.get("/api/files/{session}/{file_name}", tags=["WAHA"])
async def media_file(request: Request, session: str, file_name: str) -> Response:
    """A file a customer sent, where the event's `media.url` points. Behind the API key like
    every `/api/` route (app.py); a file never kept, or dropped since, is NestJS's 404."""
    stored = sim_of(request).store.file(session, file_name)
    if stored is None:
        message = f"Cannot GET {request.url.path}"
        return JSON({"message": message, "error": "Not Found", "statusCode": 404}, 404)
    return Response(stored.data, media_type=stored.content_type)


@router.post("/api/sendSeen", tags=["WAHA"])
async def send_seen(request: Request) -> Response:
    body = await json_object(request)
    result = await sim_of(request).send_seen(body)
    if result is None:
        return Response(status_code=201)
    return JSON(result, status_code=201)


@router.post("/api/startTyping", tags=["WAHA"])
async def start_typing(request: Request) -> JSON:
    body = await json_object(request)
    return JSON(await sim_of(request).typing(body, True), status_code=201)


@router.post("/api/stopTyping", tags=["WAHA"])
async def stop_typing(request: Request) -> JSON:
    body = await json_object(request)
    return JSON(await sim_of(request).typing(body, False), status_code=201)


@router.get("/api/sessions", tags=["WAHA"])
async def list_sessions(request: Request, all: str | None = None) -> JSON:
    everything = (all or "").lower() in ("true", "1", "yes")
    sessions = sim_of(request).store.sessions.values()
    # WAHA lists running sessions only, unless ?all=true.
    return JSON([s.info() for s in sessions if everything or s.status != "STOPPED"])


@router.get("/api/sessions/{session}", tags=["WAHA"])
async def get_session(request: Request, session: str) -> JSON:
    simulator = sim_of(request)
    info = simulator.session(session).info()
    # SessionDetailedInfo: the engine's name and, for GOWS, its gRPC connectivity.
    info["engine"] = {
        "engine": simulator.config.engine,
        "grpc": {"client": "READY", "stream": "READY"},
    }
    return JSON(info)


@router.get("/api/sessions/{session}/me", tags=["WAHA"])
async def get_me(request: Request, session: str) -> JSON:
    return JSON(sim_of(request).session(session).me)


@router.post("/api/sessions/{session}/start", tags=["WAHA"])
async def start_session(request: Request, session: str) -> JSON:
    return JSON(await sim_of(request).start_session(session), status_code=201)


@router.post("/api/sessions/{session}/stop", tags=["WAHA"])
async def stop_session(request: Request, session: str) -> JSON:
    return JSON(await sim_of(request).stop_session(session), status_code=201)


@router.get("/api/{session}/lids", tags=["WAHA"])
async def all_lids(
    request: Request, session: str, limit: int | None = None, offset: int = 0
) -> JSON:
    return JSON(await sim_of(request).all_lids(session, limit, offset))


@router.get("/api/{session}/lids/count", tags=["WAHA"])
async def lids_count(request: Request, session: str) -> JSON:
    simulator = sim_of(request)
    await simulator.working_session(session)
    return JSON({"count": len(simulator.store.lids)})


@router.get("/api/{session}/lids/pn/{phone}", tags=["WAHA"])
async def lid_by_phone(request: Request, session: str, phone: str) -> JSON:
    return JSON(await sim_of(request).phone_to_lid(session, phone))


@router.get("/api/{session}/lids/{lid}", tags=["WAHA"])
async def phone_by_lid(request: Request, session: str, lid: str) -> JSON:
    return JSON(await sim_of(request).lid_to_phone(session, lid))
