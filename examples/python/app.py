"""A wasi:http handler in Python, built with componentize-py."""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = request.path_with_query() or "/"
        body_in = b""
        if request.method().__class__.__name__ == "Method_Post":
            incoming = request.consume()
            stream = incoming.stream()
            while True:
                try:
                    chunk = stream.blocking_read(65536)
                except Exception:
                    break
                if not chunk:
                    break
                body_in += chunk
        text = f"Hello from Python! path={path} body={len(body_in)}\n".encode()
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        out = body.write()
        out.blocking_write_and_flush(text)
        out.__exit__(None, None, None)
        OutgoingBody.finish(body, None)
