"""Request body size limit, enforced before anything is parsed.

A declared ``Content-Length`` over the limit is refused without reading a
byte of the body; a body without one (chunked transfer) is read chunk by
chunk and refused as soon as it passes the limit, so a replica never holds
more than ``max_bytes`` (plus one chunk) of a request.

Ray Serve's HTTP proxy, in front of the replicas, has no limit of its own and
buffers what the client sends; put a proxy with one (nginx
``client_max_body_size``) in front of an endpoint open to untrusted clients.
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from mmray.serve.schemas import ApiError


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def too_large(size: str, max_bytes: int) -> ApiError:
    return ApiError(413, "request_too_large",
                    f"the request body is {size}; the limit is {_mib(max_bytes)} (serve.max_request_bytes): "
                    f"send fewer patients per request, or rows in feature order instead of whole profiles",
                    {"max_request_bytes": max_bytes})


async def read_body(request: Request, *, max_bytes: int) -> bytes:
    """The request body, or :class:`ApiError` 413 once it is larger than ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise ApiError(400, "invalid_content_length", "the Content-Length header is not a number") from None
        if n > max_bytes:
            raise too_large(f"{_mib(n)} (Content-Length)", max_bytes)
    chunks, total = [], 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes:
                raise too_large(f"over {_mib(max_bytes)}", max_bytes)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client closed the connection before sending the body") from None
    return b"".join(chunks)
