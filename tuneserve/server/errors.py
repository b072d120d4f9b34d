"""One error path: exceptions in, OpenAI error JSON out.

Code raises a `TuneserveError` subclass (or lets a library error propagate); the handlers
installed here turn it into `{"error": {"message", "type", "param", "code"}}` with the right
status. Route handlers never build error JSON themselves.
"""

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("tuneserve.server")


class TuneserveError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = {}


class ClientError(TuneserveError):
    status = 400
    type = "invalid_request_error"


class BadRequestError(ClientError):
    pass


class ModelNotFoundError(ClientError):
    status = 404
    code = "model_not_found"


class NotFoundError(ClientError):
    status = 404


class ContextLengthError(ClientError):
    code = "context_length_exceeded"


class RequestTooLargeError(ClientError):
    status = 413
    code = "request_too_large"


class ServerError(TuneserveError):
    pass


class ServiceUnavailableError(ServerError):
    status = 503
    type = "service_unavailable"

    def __init__(self, message: str, retry_after_s: int = 5, **kwargs):
        super().__init__(message, **kwargs)
        self.headers["Retry-After"] = str(retry_after_s)


class RequestTimeoutError(ServerError):
    status = 504
    type = "timeout"


class EngineDeadError(ServerError):
    status = 503
    type = "engine_dead"


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def to_error(exc: BaseException) -> TuneserveError:
    """Map any exception to a TuneserveError; unknown ones become a 500 with no internals."""
    if isinstance(exc, TuneserveError):
        return exc
    if isinstance(exc, TimeoutError):
        return RequestTimeoutError("The request took longer than this server's request timeout.")
    vllm_error = _from_vllm(exc)
    if vllm_error is not None:
        return vllm_error
    logger.exception("unhandled error", exc_info=exc)
    return ServerError("internal server error")


def status_of(exc: BaseException) -> int:
    """The HTTP status `exc` will be answered with (without logging it)."""
    if isinstance(exc, TuneserveError):
        return exc.status
    mapped = _from_vllm(exc)
    return mapped.status if mapped is not None else 500


def to_error_response(exc: BaseException) -> JSONResponse:
    err = to_error(exc)
    return JSONResponse(
        error_body(err.message, err.type, err.param, err.code), err.status, headers=err.headers
    )


def _from_vllm(exc: BaseException) -> TuneserveError | None:
    try:
        from vllm.exceptions import VLLMClientError, VLLMValidationError
        from vllm.v1.engine.exceptions import EngineDeadError as VLLMEngineDead
    except ImportError:
        return None
    if isinstance(exc, VLLMEngineDead):
        return EngineDeadError("the inference engine has stopped; the server must be restarted")
    if isinstance(exc, VLLMValidationError):
        return BadRequestError(str(exc.args[0]) if exc.args else str(exc), param=exc.parameter)
    if isinstance(exc, VLLMClientError):
        return BadRequestError(str(exc))
    return None


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return "We could not parse the JSON body of your request: " + first.get("msg", ""), None
    if first.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if first.get("type") == "unsupported_parameter":
        return first["msg"], first["ctx"]["name"]
    if first.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", param
    msg = first.get("msg", "invalid value").removeprefix("Value error, ")
    return (f"Invalid value for '{param}': {msg}" if param else msg), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return JSONResponse(error_body(message, "invalid_request_error", param), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        phrase = HTTPStatus(exc.status_code).phrase
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        message = exc.detail if isinstance(exc.detail, str) else phrase
        return JSONResponse(error_body(message, kind), exc.status_code, headers=exc.headers)

    @app.exception_handler(TuneserveError)
    async def _ours(_: Request, exc: TuneserveError):
        return to_error_response(exc)

    # Anything else is answered by middleware.CatchAll (500 in OpenAI's shape, logged once).
