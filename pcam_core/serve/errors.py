"""Every error of `pcam serve` as JSON `{"error": message}` with a 4xx status for what the client can fix
(never a traceback), the request-size guard, and the OpenAPI entries that declare those answers."""

from __future__ import annotations

import logging
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .schema import ErrorAnswer

log = logging.getLogger(__name__)

MB = 1024 * 1024
# what each status means in this API, for the OpenAPI schema
STATUS_WORDS = {
    400: "bad request: a field, parameter or file the server cannot take (the message names it)",
    401: "missing or wrong token (send 'Authorization: Bearer <token>')",
    404: "no such slide, analysis or output (the message says which)",
    413: "the request body is over the server's --max-request-mb",
    429: "too many slide analyses running; try again later",
    500: "an unexpected failure (its traceback is in the server's log)",
}


class ApiError(Exception):
    """An error the client can fix: answered with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route that can answer these error statuses."""
    return {status: {"model": ErrorAnswer, "description": STATUS_WORDS[status]} for status in statuses}


def declare_errors_only(app: FastAPI) -> None:
    """Make `app`'s OpenAPI schema say what the server does: validation errors are answered with 400 (not
    FastAPI's 422, which it declares on its own) and every route may answer 500."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    responses = operation.setdefault("responses", {})
                    responses.pop("422", None)
                    responses.setdefault("500", {"description": STATUS_WORDS[500], "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorAnswer"}}}})
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                components.pop(unused, None)
            components.setdefault("ErrorAnswer", ErrorAnswer.model_json_schema())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


class _RequestTooLarge(Exception):
    pass


class BodyLimit:
    """Refuses a request body over `max_bytes` with 413: at once when its Content-Length says so,
    else as soon as the bytes received pass the limit (a chunked upload)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _message(self, size: str) -> str:
        return f"request body is {size}; the limit is {self.max_bytes / MB:g} MB (the server's --max-request-mb)"

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            response = JSONResponse({"error": self._message(f"{int(length) / MB:.1f} MB")}, status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _RequestTooLarge(self._message(f"over {self.max_bytes / MB:g} MB (its size unannounced)"))
            return message

        await self.app(scope, counted, send)


def _problem(error: dict[str, Any]) -> str:
    """One pydantic validation error in words: where, then what."""
    where, place = ".".join(str(p) for p in error.get("loc", ())[1:]), (error.get("loc") or ("",))[0]
    if error.get("type") == "extra_forbidden":
        return f"unknown {'query parameter' if place == 'query' else 'field'} {where!r}"
    cause = (error.get("ctx") or {}).get("error")
    message = str(cause) if isinstance(cause, ValueError) else str(error.get("msg"))  # our validators' own words
    return f"{where}: {message}" if where and not message.startswith(where) else message


def install_error_handlers(app: FastAPI) -> None:
    def answer(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, err: ApiError) -> JSONResponse:
        return answer(err.status, str(err), {"WWW-Authenticate": "Bearer"} if err.status == 401 else None)

    @app.exception_handler(_RequestTooLarge)
    async def too_large(_request: Request, err: _RequestTooLarge) -> JSONResponse:
        return answer(413, str(err))

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, err: HTTPException) -> JSONResponse:
        # starlette's own: an unknown route (404), a wrong method (405), a malformed multipart body (400)
        return answer(err.status_code, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        return answer(400, "; ".join(_problem(e) for e in err.errors()) or "invalid request")

    @app.exception_handler(ValueError)
    async def value_error(_request: Request, err: ValueError) -> JSONResponse:
        return answer(400, str(err))

    @app.exception_handler(FileNotFoundError)
    async def not_found(_request: Request, err: FileNotFoundError) -> JSONResponse:
        return answer(404, str(err))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error")  # the traceback stays in the server's log
        return answer(500, f"internal error ({type(err).__name__}); the server's log has the details")


__all__ = ["ApiError", "BodyLimit", "MB", "STATUS_WORDS", "declare_errors_only", "error_responses", "install_error_handlers"]
