"""The simulator's failure modes, each carrying the status and body WAHA answers with.

WAHA is a NestJS app: `HttpException`s are answered with their `getResponse()` as the body.
A string message becomes `{"message", "error", "statusCode"}`; an object is sent as is (the
422 of a session that is not WORKING). Only the HTTP layer turns these into responses.

    SimError
    ├── BadRequest            400  the request body is not what WAHA expects
    ├── SessionNotFound       404  no session with that name
    ├── SessionNotWorking     422  waited for WORKING and it did not come
    ├── InvalidLid            422  a lid that does not end with @lid
    ├── AvailableInPlusVersion 422  a WAHA Plus feature (sending files) asked of WAHA Core
    └── ControlError          400  a /_sim/ control request that cannot be applied
"""

from __future__ import annotations

from typing import Any


class SimError(Exception):
    status = 500

    def body(self) -> Any:
        return {"message": str(self), "error": "Internal Server Error", "statusCode": self.status}


class BadRequest(SimError):
    status = 400

    def __init__(self, *messages: str) -> None:
        super().__init__("; ".join(messages))
        self.messages = list(messages)

    def body(self) -> Any:
        # class-validator's shape: a list of messages.
        return {"message": self.messages, "error": "Bad Request", "statusCode": 400}


class SessionNotFound(SimError):
    status = 404

    def __init__(self, name: str) -> None:
        super().__init__(
            f"We didn't find a session with name '{name}'.\n"
            f"Please start it first by using POST /api/sessions/{name}/start request"
        )

    def body(self) -> Any:
        return {"message": str(self), "error": "Not Found", "statusCode": 404}


class SessionNotWorking(SimError):
    status = 422

    def __init__(self, name: str, status: str) -> None:
        super().__init__(f"session {name!r} is {status}, not WORKING")
        self.name = name
        self.session_status = status

    def body(self) -> Any:
        # SessionManager.waitUntilStatus throws UnprocessableEntityException(object).
        return {
            "error": "Session status is not as expected. Try again later or restart the session",
            "session": self.name,
            "status": self.session_status,
            "expected": ["WORKING"],
        }


class InvalidLid(SimError):
    status = 422

    def __init__(self) -> None:
        super().__init__("Invalid LID - it must end with @lid")

    def body(self) -> Any:
        return {"message": str(self), "error": "Unprocessable Entity", "statusCode": 422}


class AvailableInPlusVersion(SimError):
    """WAHA's src/core/exceptions.ts: an UnprocessableEntityException with a string message."""

    status = 422

    def __init__(self, engine: str, feature: str = "The feature") -> None:
        super().__init__(
            f"{feature} is available only in Plus version for '{engine}' engine. "
            "Check this out: https://waha.devlike.pro/"
        )

    def body(self) -> Any:
        return {"message": str(self), "error": "Unprocessable Entity", "statusCode": 422}


class ControlError(SimError):
    status = 400

    def body(self) -> Any:
        return {"error": str(self)}
