"""A request-body size limit enforced while the body streams in (ASGI middleware)."""

import contextlib
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLargeError(Exception):
    pass


class BodySizeLimit:
    """`max_bytes` for every path but those in `upload_paths`, which take `upload_max_bytes`
    (file uploads are bigger than any JSON request)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        upload_max_bytes: int | None = None,
        upload_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.default_max_bytes = max_bytes
        self.upload_max_bytes = upload_max_bytes or max_bytes
        self.upload_paths = upload_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope.get("path") in self.upload_paths
        max_bytes = self.upload_max_bytes if upload else self.default_max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
            await self._refuse(send, max_bytes)
            return
        received = 0
        refused = False

        async def limited_receive() -> Message:
            # Frameworks turn errors raised while reading the body into a 400 of their own,
            # so the 413 is sent from here and whatever the app sends next is dropped.
            nonlocal received, refused
            message = await receive()
            received += len(message.get("body", b""))
            if received > max_bytes and not refused:
                refused = True
                await self._refuse(send, max_bytes)
                raise BodyTooLargeError
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        with contextlib.suppress(BodyTooLargeError):
            await self.app(scope, limited_receive, guarded_send)

    async def _refuse(self, send: Send, max_bytes: int) -> None:
        message = f"request body larger than {max_bytes} bytes"
        body = json.dumps(
            {"error": {"message": message, "type": "invalid_request_error", "code": "too_large"}}
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
