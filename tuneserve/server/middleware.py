"""ASGI middleware: the API key (checked before a body is read), errors nothing else caught, and
the request body size limit (413)."""

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuneserve.server.errors import RequestTooLargeError, TuneserveError, to_error_response

logger = logging.getLogger("tuneserve.server")


class CatchAll:
    """The last word on any exception the route handlers let through: OpenAI error JSON (500, no
    internals; the traceback goes to the log once). Starlette's own handler for `Exception`
    re-raises after answering, which makes uvicorn log it again and can reset the connection."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        is_started = False

        async def tracked(message: Message) -> None:
            nonlocal is_started
            is_started = is_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if is_started:  # headers are out: nothing valid can follow; end the response quietly
                logger.exception("error after the response started", exc_info=exc)
                return
            await to_error_response(exc)(scope, receive, send)


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = RequestTooLargeError(f"Request body is larger than the server's limit of {self.max_bytes} bytes.")
        await to_error_response(error)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, receive, send)
        # Chunked bodies declare no length: read (at most the limit), then replay to the app.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._reject(scope, receive, send)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the disconnect, as the app expects

        await self.app(scope, replay, send)


OPEN_PATHS = {"/health", "/ready", "/playground"}  # probes, and the page that asks its user for a key
PROBE_PATHS = {"/metrics", "/version"}  # open unless --metrics-auth
DOCS_PATHS = {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}  # need a key unless --public-docs


class Authenticate:
    """With keys configured, every path but the open ones needs a valid key, checked before the
    body is read or parsed; the tenant is handed to the routes in `request.state.tenant` (they
    check its scope and models)."""

    def __init__(self, app: ASGIApp, auth, metrics_auth: bool = False, public_docs: bool = False):
        self.app, self.auth = app, auth
        self.open_paths = OPEN_PATHS | (set() if metrics_auth else PROBE_PATHS) | (DOCS_PATHS if public_docs else set())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.auth is None or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        try:
            tenant = self.auth.authenticate(header)
        except TuneserveError as e:
            return await to_error_response(e)(scope, receive, send)
        scope.setdefault("state", {})["tenant"] = tenant
        await self.app(scope, receive, send)
