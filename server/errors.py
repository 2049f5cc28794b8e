"""Typed API errors and their one rendering, in the OpenAI shape.

`{"error": {"message", "type", "param", "code"}}` with a string `code` and `param` pointing at the
exact field. Messages are ours; library text is logged under the request id, never returned.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    status = 400
    code = "invalid_request"

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class InvalidRequest(APIError):
    status = 400
    code = "invalid_request"


class ContextLengthExceeded(APIError):
    status = 400
    code = "context_length_exceeded"


class InvalidImage(APIError):
    status = 400
    code = "invalid_image"


class UnsupportedMedia(APIError):
    status = 400
    code = "unsupported_media_format"


class BlockedMediaURL(APIError):
    status = 400
    code = "blocked_media_url"


class ModelNotFound(APIError):
    status = 404
    code = "model_not_found"


class NotReady(APIError):
    status = 503
    code = "not_ready"


class InternalError(APIError):
    status = 500
    code = "internal_error"
