"""A local server that speaks the OpenAI chat-completions protocol, with faults on demand.

The LLM client is tested through the real ``openai`` package over real HTTP against this
server: it answers with a JSON object that fits the schema it was asked for (from the
``json_schema`` response format, or the schema the client writes into the prompt when it
has fallen back), and a test scripts the faults a real endpoint shows: malformed JSON, an
answer that breaks the schema, a refusal, 429 with Retry-After, 500, a slow answer, a 400
for a prompt too long, a server that refuses ``json_schema`` and one that wants
``max_completion_tokens``. It counts requests and the most in flight at once, and waits
``latency`` seconds per request for the benchmark.

Standard library only (a thread per connection), so it also runs by hand (``GET /v1/stats``
gives the request count and the most requests in flight)::

    python tests/helpers/llm_server.py --port 8000 --latency 0.2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[dict[str, Any]], dict[str, Any]]

#: Fault kinds a test can script with :meth:`LLMServer.fail`.
FAULTS = (
    "malformed",  # content that is not JSON
    "schema",  # valid JSON that violates the schema
    "refusal",  # message.refusal set, no content
    "text_refusal",  # a refusal written as plain text
    "fenced",  # a valid answer inside prose and a ```json fence
    "rate_limit",  # 429 with Retry-After (seconds, or any text: an HTTP date, garbage)
    "server_error",  # 500
    "bad_request",  # 400: the prompt is longer than the context
    "slow",  # answers, but only after `delay` seconds
    "drop",  # closes the connection without answering
    "unauthorized",  # 401 that echoes the key it was sent, as careless servers do
)

_SCHEMA_MARK = "JSON schema of the answer:\n"


@dataclass
class Fault:
    kind: str
    times: int = 1
    match: str | None = None
    #: Seconds, or the header's text as sent (an HTTP date, garbage...).
    retry_after: float | str | None = None
    delay: float = 0.0


class LLMServer:
    """Start with :meth:`start` (or as a context manager); ``url`` is the ``base_url`` to give a client."""

    def __init__(
        self,
        latency: float = 0.0,
        responder: Responder | None = None,
        reject_json_schema: bool = False,
        reject_json_object: bool = False,
        reject_max_tokens: bool = False,
        port: int = 0,
    ) -> None:
        self.latency = latency
        self.responder = responder or schema_answer
        self.reject_json_schema = reject_json_schema
        self.reject_json_object = reject_json_object
        self.reject_max_tokens = reject_max_tokens
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        #: The query string of every POST (an endpoint may carry ``?api-version=`` or a token).
        self.queries: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._httpd = QueuedServer(("127.0.0.1", port), _handler_for(self))
        self._thread: threading.Thread | None = None

    # -- control ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def count(self) -> int:
        """Chat-completion requests received, faults included."""
        with self._lock:
            return len(self.requests)

    def start(self) -> LLMServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail(self, kind: str, times: int = 1, match: str | None = None, retry_after: float | str | None = None,
             delay: float = 0.0) -> None:
        """The next ``times`` requests (whose text contains ``match``, when given) meet fault ``kind``."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; known: {FAULTS}")
        with self._lock:
            self._faults.append(Fault(kind, times, match, retry_after, delay))

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait for requests still being answered (a slow answer a client gave up on) to finish."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.authorizations.clear()
            self.queries.clear()
            self._faults.clear()
            self.max_in_flight = 0

    def formats(self) -> list[str]:
        """The response_format type of every request received ('text' when none was sent)."""
        with self._lock:
            return [(r.get("response_format") or {}).get("type", "text") for r in self.requests]

    # -- serving ---------------------------------------------------------------------------
    def _take_fault(self, body: dict[str, Any]) -> Fault | None:
        text = _all_text(body)
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and (fault.match is None or fault.match in text):
                    fault.times -= 1
                    return fault
        return None

    def _record(self, body: dict[str, Any], authorization: str | None) -> None:
        with self._lock:
            self.requests.append(body)
            self.authorizations.append(authorization)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def respond(self, body: dict[str, Any], authorization: str | None = None) -> tuple[int, dict[str, str], dict[str, Any] | None]:
        """(status, headers, JSON body) for one request; None body means: drop the connection."""
        if self.latency:
            time.sleep(self.latency)
        fmt = (body.get("response_format") or {}).get("type")
        if (fmt == "json_schema" and self.reject_json_schema) or (fmt == "json_object" and self.reject_json_object):
            return 400, {}, _error(f"response_format type {fmt} is not supported by this server", "invalid_request_error")
        if self.reject_max_tokens and "max_tokens" in body:  # as OpenAI's reasoning models answer
            return 400, {}, _error("Unsupported parameter: 'max_tokens' is not supported with this model. "
                                   "Use 'max_completion_tokens' instead.", "unsupported_parameter")
        fault = self._take_fault(body)
        kind = fault.kind if fault else None
        if kind == "drop":
            return 0, {}, None
        if kind == "rate_limit":
            after = fault.retry_after if fault else None
            headers = {} if after is None else {"Retry-After": after if isinstance(after, str) else f"{after:g}"}
            return 429, headers, _error("Rate limit reached for requests", "rate_limit_exceeded")
        if kind == "unauthorized":
            return 401, {}, _error(f"Incorrect API key provided: {(authorization or '').removeprefix('Bearer ')}", "invalid_api_key")
        if kind == "server_error":
            return 500, {}, _error("The server had an error while processing your request", "server_error")
        if kind == "bad_request":
            return 400, {}, _error("This model's maximum context length is 8192 tokens; your messages resulted in 9000 tokens", "context_length_exceeded")
        if kind == "slow" and fault is not None:
            time.sleep(fault.delay)
        refusal = None
        if kind == "refusal":
            content, refusal = None, "I'm sorry, I can't help with that request."
        elif kind == "text_refusal":
            content = "I'm sorry, but I can't help with that."
        elif kind == "malformed":
            content = '{"instruction": "make it red", '  # cut off: not JSON
        elif kind == "schema":
            content = json.dumps({"unexpected": "field"})
        else:
            answer = json.dumps(self.responder(body))
            content = f"Here is the edit:\n```json\n{answer}\n```\nEnjoy." if kind == "fenced" else answer
        return 200, {}, _completion(body, content, refusal)


class QueuedServer(ThreadingHTTPServer):
    """A thread per connection and a deep accept queue (tests/helpers/image_edit_server.py serves on it too)."""

    daemon_threads = True
    request_queue_size = 256  # many clients connect at once; the default backlog of 5 stalls them
    allow_reuse_address = True


def _handler_for(server: LLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints do
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

        def do_GET(self) -> None:
            if self.path.rstrip("/").endswith("/stats"):  # for a benchmark that runs the server in another process
                self._send(200, {}, {"count": server.count, "max_in_flight": server.max_in_flight})
            elif self.path.rstrip("/").endswith("/models"):
                self._send(200, {}, {"object": "list", "data": [{"id": "local-test-model", "object": "model", "owned_by": "tests"}]})
            else:
                self._send(404, {}, _error("not found", "not_found"))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            server.queries.append(self.path.partition("?")[2])
            if not self.path.partition("?")[0].rstrip("/").endswith("/chat/completions"):
                self._send(404, {}, _error("not found", "not_found"))
                return
            try:
                body = json.loads(raw)
            except ValueError:
                self._send(400, {}, _error("request body is not JSON", "invalid_request_error"))
                return
            server._record(body, self.headers.get("Authorization"))
            try:
                status, headers, payload = server.respond(body, self.headers.get("Authorization"))
            finally:
                server._done()
            if payload is None:
                self.close_connection = True
                self.connection.close()
                return
            self._send(status, headers, payload)

        def _send(self, status: int, headers: dict[str, str], payload: dict[str, Any]) -> None:
            send_json(self, status, headers, payload)

    return Handler


def send_json(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], payload: Any) -> None:
    """One JSON answer with its headers; a client that gave up (a timeout) is nothing to do."""
    data = json.dumps(payload).encode("utf-8")
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        handler.close_connection = True


# --- answers ------------------------------------------------------------------------------


def schema_answer(body: dict[str, Any]) -> dict[str, Any]:
    """A JSON object that fits the schema the request carries, varied by the request's text."""
    schema = request_schema(body)
    if schema is None:
        return {"answer": "ok"}
    tag = hashlib.sha256(_all_text(body).encode("utf-8")).hexdigest()[:6]
    return fill(schema, schema.get("$defs", {}), tag, "")


def request_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The answer's schema: from the json_schema response format, else from the prompt's schema hint."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return fmt["json_schema"]["schema"]
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str) and _SCHEMA_MARK in content:
            return json.loads(content.split(_SCHEMA_MARK, 1)[1])
    return None


def fill(schema: dict[str, Any], defs: dict[str, Any], tag: str, name: str) -> Any:
    """The simplest value of a JSON schema (objects, arrays, strings, enums, anyOf, $ref)."""
    if "$ref" in schema:
        return fill(defs[schema["$ref"].rsplit("/", 1)[1]], defs, tag, name)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    if "anyOf" in schema:
        branches = [b for b in schema["anyOf"] if b.get("type") != "null"] or schema["anyOf"]
        return fill(branches[0], defs, tag, name)
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {key: fill(sub, defs, tag, key) for key, sub in props.items()}
    if kind == "array":
        count = max(1, schema.get("minItems", 1))
        return [fill(schema.get("items", {"type": "string"}), defs, tag, "item") for _ in range(count)]
    if kind == "string":
        words = {"edit_objects": "cat", "item": "cat"}
        text = words.get(name, f"{name.replace('_', ' ')} {tag}")
        return text.ljust(schema.get("minLength", 0), ".")
    if kind == "integer":
        return int(schema.get("minimum", 0))
    if kind == "number":
        return float(schema.get("minimum", 0.0))
    if kind == "boolean":
        return True
    return None


def _completion(body: dict[str, Any], content: str | None, refusal: str | None) -> dict[str, Any]:
    prompt_tokens = max(1, len(json.dumps(body.get("messages", []))) // 4)
    completion_tokens = max(1, len(content or refusal or "") // 4)
    return {
        "id": f"chatcmpl-{hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "local-test-model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


def _all_text(body: dict[str, Any]) -> str:
    parts: list[str] = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p.get("text", "") for p in content if p.get("type") == "text"]
    return "\n".join(parts)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds to wait before each answer")
    args = parser.parse_args()
    server = LLMServer(latency=args.latency, port=args.port).start()
    print(f"serving the chat-completions protocol at {server.url} (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


def serving() -> Iterator[LLMServer]:
    """The body of a test module's ``server`` fixture: one local server for the module, stopped at its end."""
    with LLMServer() as running:
        yield running


if __name__ == "__main__":
    _main()
