"""API errors with Toxiproxy's status codes and messages.

A Toxiproxy error body is `{"error": "<message>", "status": <code>}`; clients map 404,
409 and 400 to their own exceptions (toxiproxy-python: NotFound, ProxyExists,
InvalidToxic), so the codes must match exactly, the messages as closely as we can.
"""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.message = message
        self.status = status

    def to_json(self) -> dict:
        return {"error": self.message, "status": self.status}

    def joined(self, detail: str) -> ApiError:
        """`<this message>: <detail>`, as Toxiproxy's joinError builds them."""
        return ApiError(f"{self.message}: {detail}", self.status)


BAD_REQUEST_BODY = ApiError("bad request body", 400)
MISSING_FIELD = ApiError("missing required field", 400)
PROXY_NOT_FOUND = ApiError("proxy not found", 404)
PROXY_EXISTS = ApiError("proxy already exists", 409)
INVALID_STREAM = ApiError("stream was invalid, can be either upstream or downstream", 400)
INVALID_TOXIC_TYPE = ApiError("invalid toxic type", 400)
TOXIC_EXISTS = ApiError("toxic already exists", 409)
TOXIC_NOT_FOUND = ApiError("toxic not found", 404)


class AlreadyStarted(Exception):
    """Starting a proxy that listens already (POST /reset ignores it, as Toxiproxy does)."""
