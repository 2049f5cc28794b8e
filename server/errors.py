"""Typed API errors, their one rendering in the OpenAI shape (spec serving.md section 3), and the
one translation of the model runtime's exceptions into them (`from_runtime`).

`{"error": {"message", "type", "param", "code"}}` with a string `code` and `param` pointing at the
exact field. Messages are ours; library text is logged under the request id, never returned.
A caller's mistake is never a 5xx (the official client retries those); any other exception is a
500 that says nothing of it.
"""

from __future__ import annotations

import json

from model_runtime import EngineDeadError, EngineDrainingError, RequestInputError

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}
ANTHROPIC_ERROR_TYPES = {  # the Messages API's error types by status (docs/API.md)
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
}
RETRY_AFTER_S = 5
INTERNAL_MESSAGE = "internal error; see the server log for this request id"
_MAX_INPUT_MESSAGE_CHARS = 300


class APIError(Exception):
    status = 400
    code = "invalid_request"
    is_retryable = False  # rendered as `x-should-retry`

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = {"x-should-retry": "true" if self.is_retryable else "false", **(headers or {})}

    def body(self, shape: str = "openai") -> dict:
        """The error object in OpenAI's shape, or in Anthropic's (`shape="anthropic"`: /v1/messages)."""
        if shape == "anthropic":
            kind = ANTHROPIC_ERROR_TYPES.get(self.status, "invalid_request_error")
            return {"type": "error", "error": {"type": kind, "message": self.message}}
        return {
            "error": {
                "message": self.message,
                "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def json_bytes(self, shape: str = "openai") -> bytes:
        return json.dumps(self.body(shape)).encode()


class InvalidRequest(APIError):
    code = "invalid_request"


class ContextLengthExceeded(APIError):
    code = "context_length_exceeded"


class TooManyMediaItems(APIError):
    code = "too_many_media_items"


class ImageTooLarge(APIError):
    code = "image_too_large"


class VideoTooLong(APIError):
    code = "video_too_long"


class AudioTooLong(APIError):
    code = "audio_too_long"


class InvalidImage(APIError):
    code = "invalid_image"


class InvalidVideo(APIError):
    code = "invalid_video"


class InvalidAudio(APIError):
    code = "invalid_audio"


class UnsupportedMedia(APIError):
    code = "unsupported_media_format"


class BlockedMediaURL(APIError):
    code = "blocked_media_url"


class MediaFetchFailed(APIError):
    code = "media_fetch_failed"


class RequestTooLarge(APIError):
    status = 413
    code = "request_too_large"


class InvalidAPIKey(APIError):
    status = 401
    code = "invalid_api_key"


class ModelNotFound(APIError):
    status = 404
    code = "model_not_found"


class RouteNotFound(APIError):
    status = 404
    code = "not_found"


class ServerOverloaded(APIError):
    status = 429
    code = "server_overloaded"
    is_retryable = True

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": str(RETRY_AFTER_S)})


class ShuttingDown(APIError):
    status = 503
    code = "server_shutting_down"
    is_retryable = True

    def __init__(self, message: str = "the server is shutting down; retry on another replica") -> None:
        super().__init__(message, headers={"Retry-After": str(RETRY_AFTER_S)})


class NotReady(APIError):
    status = 503
    code = "not_ready"
    is_retryable = True

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": str(RETRY_AFTER_S)})


class InternalError(APIError):
    """An engine fault on this request; `is_retryable=False` when the same request would fail again."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, is_retryable: bool = False) -> None:
        self.is_retryable = is_retryable
        super().__init__(message)


MEDIA_ERRORS: dict[str, type[APIError]] = {
    cls.code: cls
    for cls in (TooManyMediaItems, ImageTooLarge, VideoTooLong, AudioTooLong, InvalidImage, InvalidVideo,
                InvalidAudio, UnsupportedMedia, BlockedMediaURL, MediaFetchFailed)
}


def error_codes() -> list[str]:
    """Every code an API error class states (the bounded label set of the error counter)."""
    codes, todo = set(), [APIError]
    while todo:
        cls = todo.pop()
        codes.add(cls.code)
        todo.extend(cls.__subclasses__())
    return sorted(codes)


def media_error(code: str, message: str, param: str | None) -> APIError:
    """The API error for a media failure reported by code (e.g. from a decoder process)."""
    return MEDIA_ERRORS.get(code, InvalidRequest)(message, param=param)


def from_runtime(error: Exception, param: str | None = None, prefix: str = "", code: str | None = None) -> APIError:
    """The API error for an exception raised below the routes (the model runtime's, mostly).

    A `RequestInputError` is the caller's: a 400 whose message is `prefix` + the first line of its
    own, at `param` (a SamplingParamsError names its field itself; `code` picks a media error's
    class). A draining or stopped engine is a 503. Anything else, a plain ValueError included, is
    ours: a 500 whose text says nothing of it (the caller logs it under the request id).
    """
    if isinstance(error, APIError):
        return error
    if isinstance(error, EngineDrainingError):
        return ShuttingDown()
    if isinstance(error, EngineDeadError):
        return NotReady("the engine worker has stopped")
    if isinstance(error, RequestInputError):
        lines = str(error).strip().splitlines()
        message = prefix + (lines[0][:_MAX_INPUT_MESSAGE_CHARS] if lines else "not supported")
        param = getattr(error, "param", None) or param
        return media_error(code, message, param) if code is not None else InvalidRequest(message, param=param)
    return InternalError(INTERNAL_MESSAGE)
