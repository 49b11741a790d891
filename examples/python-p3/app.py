"""A wasi:http/service@0.3.0 handler (WASI 0.3) in Python, built with
componentize-py: `handle` is a coroutine, bodies are streams."""

from componentize_py_async_support import spawn
from componentize_py_types import Ok

import wit_world
from wit_world import exports
from wit_world.imports.wasi_http_types import Fields, Method_Post, Request, Response


class Handler(exports.Handler):
    async def handle(self, request: Request) -> Response:
        path = request.get_path_with_query() or "/"
        size = 0
        if isinstance(request.get_method(), Method_Post):
            _, done = wit_world.result_unit_wasi_http_types_error_code_future(lambda: Ok(None))
            body, _trailers = Request.consume_body(request, done)
            with body:
                while chunk := await body.read(65536):
                    size += len(chunk)
        text = f"Hello from Python on WASI 0.3! path={path} body={size}\n".encode()

        tx, rx = wit_world.byte_stream()
        trailers_tx, trailers_rx = (
            wit_world.result_option_wasi_http_types_fields_wasi_http_types_error_code_future(
                lambda: Ok(None)
            )
        )
        response, _ = Response.new(
            Fields.from_list([("content-type", b"text/plain")]), rx, trailers_rx
        )

        # The body is written after `handle` returns: the caller reads it then.
        async def write_body() -> None:
            with tx:
                await tx.write_all(text)
            with trailers_tx:
                await trailers_tx.write(Ok(None))

        spawn(write_body())
        return response
