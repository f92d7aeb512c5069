"""A local server that speaks OpenAI's image-edit protocol (``POST /v1/images/edits``), with faults on demand.

The ``openai`` backend of ``edit_model`` is tested through the real ``openai`` package over real
HTTP against this server, as the LLM client is against tests/helpers/llm_server.py (same fault
scripting). It parses the multipart form the client uploads (``model``, ``prompt``, ``n``,
``size``, ``quality``, ``output_format``, any extra field such as ``seed``; the file parts
``image``, ``image[]`` and ``mask``) and answers as the GPT image models do::

    {"created": ..., "background": "opaque", "output_format": "png", "quality": "low", "size": "64x48",
     "data": [{"b64_json": "..."}, ...], "usage": {"input_tokens": ..., "output_tokens": ..., ...}}

An edited image is a deterministic function of (first input image, prompt, seed, index): the
input at the asked size blended with a tint drawn from their hash, so a test can tell
candidates apart and check that a request gives the same bytes again.

Faults a test scripts with :meth:`ImageEditServer.fail` (optionally only for prompts containing
``match``): ``rate_limit`` (429 with Retry-After), ``server_error`` (500), ``overloaded`` (503),
``slow`` (answers after ``delay`` s: a client timeout), ``drop`` (closes the connection),
``moderation`` (400 ``moderation_blocked`` with ``moderation_details``, the GPT image models'
refusal), ``content_policy`` (400 ``content_policy_violation``, the DALL-E-era refusal),
``bad_base64`` / ``not_image`` / ``no_data`` / ``url_only`` (200 answers that hold no image),
``unauthorized`` (401 that echoes the key, as careless servers do), ``bad_size`` (400 about the
``size`` parameter). It counts requests and the most in flight, and waits ``latency`` s per request.

Standard library and Pillow (a thread per connection), so it also runs by hand
(``GET /v1/stats`` gives the request count and the most requests in flight)::

    python tests/helpers/image_edit_server.py --port 8001 --latency 0.5 [--echo]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.helpers.llm_server import QueuedServer, send_json

FAULTS = (
    "rate_limit", "server_error", "overloaded", "slow", "drop", "moderation", "content_policy",
    "bad_base64", "not_image", "no_data", "url_only", "unauthorized", "bad_size",
)

#: The refusal messages OpenAI's image models answer with (as quoted in public bug reports).
MODERATION_MESSAGE = (
    "Your request was rejected by the safety system. If you believe this is an error, contact us at "
    "help.openai.com and include the request ID {rid}. safety_violations=[{category}]."
)
CONTENT_POLICY_MESSAGE = (
    "Your request was rejected as a result of our safety system. Your prompt may contain text that is not "
    "allowed by our safety system."
)
#: Output tokens of the GPT image models per quality at 1024x1024 (scaled by area here).
OUTPUT_TOKENS_1MP = {"low": 272, "medium": 1056, "high": 4160, "auto": 1056}


@dataclass
class EditRequest:
    """One received request: form fields and uploaded files (name -> [(filename, content type, bytes)])."""

    fields: dict[str, str]
    files: dict[str, list[tuple[str, str, bytes]]] = field(default_factory=dict)
    authorization: str | None = None

    @property
    def images(self) -> list[bytes]:
        return [data for key in ("image", "image[]") for _, _, data in self.files.get(key, [])]

    @property
    def prompt(self) -> str:
        return self.fields.get("prompt", "")


Responder = Callable[[EditRequest], list[bytes]]


@dataclass
class Fault:
    kind: str
    times: int = 1
    match: str | None = None
    retry_after: float | None = None
    delay: float = 0.0
    category: str = "sexual"


class ImageEditServer:
    """Start with :meth:`start` (or as a context manager); ``url`` is the ``base_url`` to give a client."""

    def __init__(self, latency: float = 0.0, responder: Responder | None = None, port: int = 0) -> None:
        self.latency = latency
        self.responder = responder or tinted_edit
        self.requests: list[EditRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._httpd = QueuedServer(("127.0.0.1", port), _handler_for(self))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def count(self) -> int:
        """Image-edit requests received, faults included."""
        with self._lock:
            return len(self.requests)

    def start(self) -> ImageEditServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ImageEditServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail(self, kind: str, times: int = 1, match: str | None = None, retry_after: float | None = None, delay: float = 0.0,
             category: str = "sexual") -> None:
        """The next ``times`` requests (whose prompt contains ``match``, when given) meet fault ``kind``."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; known: {FAULTS}")
        with self._lock:
            self._faults.append(Fault(kind, times, match, retry_after, delay, category))

    def wait_idle(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._faults.clear()
            self.max_in_flight = 0

    # -- serving ---------------------------------------------------------------------------
    def _take_fault(self, request: EditRequest) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and (fault.match is None or fault.match in request.prompt):
                    fault.times -= 1
                    return fault
        return None

    def _record(self, request: EditRequest) -> None:
        with self._lock:
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def respond(self, request: EditRequest) -> tuple[int, dict[str, str], dict[str, Any] | None]:
        """(status, headers, JSON body) for one request; a None body means: drop the connection."""
        if self.latency:
            time.sleep(self.latency)
        if not request.images:
            return 400, {}, _error("'image' is a required property", "invalid_request_error", param="image", code=None)
        if not request.prompt:
            return 400, {}, _error("'prompt' is a required property", "invalid_request_error", param="prompt", code=None)
        fault = self._take_fault(request)
        kind = fault.kind if fault else None
        n = int(request.fields.get("n") or 1)
        now = int(time.time())
        if kind == "drop":
            return 0, {}, None
        if kind == "rate_limit":
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault and fault.retry_after is not None else {}
            return 429, headers, _error("Rate limit reached for gpt-image in organization org-test on images per minute (IPM)",
                                        "requests", code="rate_limit_exceeded")
        if kind == "server_error":
            return 500, {}, _error("The server had an error while processing your request. Sorry about that!", "server_error")
        if kind == "overloaded":
            return 503, {}, _error("The engine is currently overloaded, please try again later", "server_error")
        if kind == "unauthorized":
            key = (request.authorization or "").removeprefix("Bearer ")
            return 401, {}, _error(f"Incorrect API key provided: {key}.", "invalid_request_error", code="invalid_api_key")
        if kind == "moderation" and fault is not None:
            rid = hashlib.sha256(request.prompt.encode()).hexdigest()[:32]
            body = _error(MODERATION_MESSAGE.format(rid=rid, category=fault.category), "image_generation_user_error", code="moderation_blocked")
            body["error"]["moderation_details"] = {"moderation_stage": "input", "categories": [fault.category]}
            return 400, {}, body
        if kind == "content_policy":
            return 400, {}, _error(CONTENT_POLICY_MESSAGE, "invalid_request_error", code="content_policy_violation")
        if kind == "bad_size":
            return 400, {}, _error(f"Invalid value: '{request.fields.get('size')}'. Supported values are: '1024x1024', '1024x1536', "
                                   "'1536x1024', and 'auto'.", "invalid_request_error", param="size", code="invalid_value")
        if kind == "slow" and fault is not None:
            time.sleep(fault.delay)
        if kind == "no_data":
            return 200, {}, {"created": now}
        if kind == "bad_base64":
            return 200, {}, {"created": now, "data": [{"b64_json": "%%% not base64 %%%"}] * n}
        if kind == "not_image":
            return 200, {}, {"created": now, "data": [{"b64_json": base64.b64encode(b"plain text, no image").decode()}] * n}
        if kind == "url_only":
            return 200, {}, {"created": now, "data": [{"url": "https://example.invalid/image.png"}] * n}
        return 200, {}, _answer(request, self.responder(request))


def _handler_for(server: ImageEditServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

        def do_GET(self) -> None:
            if self.path.rstrip("/").endswith("/stats"):
                send_json(self, 200, {}, {"count": server.count, "max_in_flight": server.max_in_flight})
            else:
                send_json(self, 404, {}, _error("not found", "invalid_request_error", code="not_found"))

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not self.path.partition("?")[0].rstrip("/").endswith("/images/edits"):
                send_json(self, 404, {}, _error(f"Invalid URL (POST {self.path})", "invalid_request_error", code="not_found"))
                return
            try:
                request = parse_multipart(self.headers.get("Content-Type", ""), raw)
            except ValueError as error:
                send_json(self, 400, {}, _error(str(error), "invalid_request_error"))
                return
            request.authorization = self.headers.get("Authorization")
            server._record(request)
            try:
                status, headers, payload = server.respond(request)
            finally:
                server._done()
            if payload is None:
                self.close_connection = True
                self.connection.close()
                return
            send_json(self, status, headers, payload)

    return Handler


# --- multipart ----------------------------------------------------------------------------


def parse_multipart(content_type: str, body: bytes) -> EditRequest:
    """Fields and files of a multipart/form-data body (RFC 7578).

    The body is split on the boundary with ``bytes.find`` (the standard library's email parser is
    line-based: slow for a 1 MP PNG), and each part's two headers are read by :func:`part_headers`
    (email's header registry took ~5 ms a request for seven parts: the server's own capacity, not
    the client's, was what a throughput benchmark measured).
    """
    mime, _, params = content_type.partition(";")
    if mime.strip() != "multipart/form-data":
        raise ValueError(f"expected multipart/form-data, got {content_type or 'no Content-Type'}")
    boundary = ""
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        raise ValueError("multipart/form-data without a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    fields: dict[str, str] = {}
    files: dict[str, list[tuple[str, str, bytes]]] = {}
    position = body.find(delimiter)
    if position < 0:
        raise ValueError("the multipart body has no boundary line")
    while True:
        position += len(delimiter)
        if body.startswith(b"--", position):
            break  # the closing delimiter
        head_end = body.find(b"\r\n\r\n", position)
        following = body.find(b"\r\n" + delimiter, head_end)
        if head_end < 0 or following < 0:
            raise ValueError("a multipart part is cut off")
        disposition, content_type = part_headers(body[position:head_end])
        content = body[head_end + 4 : following]
        name, filename = disposition.get("name"), disposition.get("filename")
        if name:
            if filename is not None:
                files.setdefault(name, []).append((filename, content_type, content))
            else:
                fields[name] = content.decode("utf-8")
        position = following + 2
    return EditRequest(fields=fields, files=files)


#: One ``; key=value`` parameter of a header, the value a quoted string (with backslash escapes) or a token.
_PARAMETER = re.compile(r'; *([\w!#$%&*+.^`|~-]+) *= *(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


def part_headers(block: bytes) -> tuple[dict[str, str], str]:
    """A part's Content-Disposition parameters (``name``, ``filename``) and its Content-Type (default ``text/plain``)."""
    disposition: dict[str, str] = {}
    content_type = "text/plain"
    for line in block.decode("utf-8").split("\r\n"):
        header, _, value = line.partition(":")
        header = header.strip().lower()
        if header == "content-disposition":
            kind, _, rest = value.partition(";")
            if kind.strip().lower() != "form-data":
                raise ValueError(f"a multipart part is {kind.strip() or 'not'} form-data")
            for match in _PARAMETER.finditer(";" + rest):
                quoted, token = match.group(2), match.group(3)
                disposition[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else token
        elif header == "content-type":
            content_type = value.partition(";")[0].strip().lower() or content_type
    return disposition, content_type


# --- answers ------------------------------------------------------------------------------


def tinted_edit(request: EditRequest) -> list[bytes]:
    """n images: the first input at the asked size, blended with a tint drawn from hash(input, prompt, seed, index)."""
    from PIL import Image

    source = Image.open(io.BytesIO(request.images[0])).convert("RGB")
    width, height = _size(request.fields.get("size"), source.size)
    fmt = {"jpeg": "JPEG", "webp": "WEBP"}.get(request.fields.get("output_format", "png"), "PNG")
    digest = hashlib.sha256(request.images[0]).hexdigest()
    out = []
    for index in range(int(request.fields.get("n") or 1)):
        tag = hashlib.sha256(f"{digest}|{request.prompt}|{request.fields.get('seed')}|{index}".encode()).digest()
        edited = Image.blend(source.resize((width, height)), Image.new("RGB", (width, height), tuple(tag[:3])), 0.35)
        buffer = io.BytesIO()
        edited.save(buffer, fmt)
        out.append(buffer.getvalue())
    return out


def echo_edit(request: EditRequest) -> list[bytes]:
    """n copies of the uploaded image, unchanged: no image work, for benchmarks of the client alone."""
    return [request.images[0]] * int(request.fields.get("n") or 1)


def _size(value: str | None, source: tuple[int, int]) -> tuple[int, int]:
    if not value or value == "auto":
        return source
    width, _, height = value.partition("x")
    return int(width), int(height)


def _answer(request: EditRequest, images: list[bytes]) -> dict[str, Any]:
    quality = request.fields.get("quality", "auto")
    width, height = _size(request.fields.get("size"), (1024, 1024))
    output = round(OUTPUT_TOKENS_1MP.get(quality, 1056) * width * height / (1024 * 1024)) * len(images)
    text, image_in = max(1, len(request.prompt) // 4), 65 * len(request.images)
    return {
        "created": int(time.time()),
        "background": "transparent" if request.fields.get("background") == "transparent" else "opaque",
        "output_format": request.fields.get("output_format", "png"),
        "quality": quality if quality != "auto" else "medium",
        "size": f"{width}x{height}",
        "data": [{"b64_json": base64.b64encode(image).decode("ascii")} for image in images],
        "usage": {
            "input_tokens": text + image_in, "input_tokens_details": {"image_tokens": image_in, "text_tokens": text},
            "output_tokens": output, "output_tokens_details": {"image_tokens": output, "text_tokens": 0},
            "total_tokens": text + image_in + output,
        },
    }


def _error(message: str, type_: str, param: str | None = None, code: str | None = "") -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": type_ if code == "" else code}}


def serving() -> Iterator[ImageEditServer]:
    """The body of a test module's ``server`` fixture: one local server for the module, stopped at its end."""
    with ImageEditServer() as running:
        yield running


def _main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port (printed)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds to wait before each answer")
    parser.add_argument("--echo", action="store_true", help="answer with the uploaded image itself (no image work)")
    args = parser.parse_args()
    server = ImageEditServer(latency=args.latency, responder=echo_edit if args.echo else None, port=args.port).start()
    print(f"serving the image-edit protocol at {server.url} (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    _main()
