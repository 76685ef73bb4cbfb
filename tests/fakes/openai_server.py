"""A fake OpenAI-compatible ``/v1/chat/completions`` endpoint on 127.0.0.1 for tests and benchmarks.

It listens on an ephemeral port in a background thread, answers each request after a fixed latency,
counts requests (in total and per prompt hash), reports token usage, and plays scripted faults:
an HTTP status with an optional ``Retry-After``, a delay longer than the client's timeout (a hung
request), or a raw malformed body.

Example:
    >>> with FakeOpenAIServer(latency_s=0.2) as server:
    ...     server.add_faults(Fault(status=429, retry_after=0.1))
    ...     # point LLMConfig(base_url=server.base_url, ...) at it
    ...     server.requests
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = Callable[[list[dict[str, str]]], str]


def prompt_hash(messages: list[dict[str, str]]) -> str:
    """Hash of a request's messages, the key of :attr:`FakeOpenAIServer.by_prompt`."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def echo_reply(messages: list[dict[str, str]]) -> str:
    """Default completion: ``echo: <last message>`` (deterministic, so outputs can be checked)."""
    return "echo: " + messages[-1]["content"]


@dataclass
class Fault:
    """One scripted misbehaviour, used by the next request it matches (then discarded).

    Args:
        status: HTTP status to answer with (200 with ``body`` for malformed output).
        retry_after: seconds for a ``Retry-After`` header.
        delay_s: sleep this long before answering (beyond the client timeout: a hung request).
        body: raw response body instead of the usual JSON.
        match: only requests whose last message contains this string.
    """

    status: int = 500
    retry_after: float | None = None
    delay_s: float = 0.0
    body: str | None = None
    match: str | None = None


class FakeOpenAIServer:
    """Threaded fake endpoint; see the module docstring.

    Args:
        latency_s: fixed delay before every answer.
        reply: ``messages -> completion text``.
    """

    def __init__(self, latency_s: float = 0.0, reply: Reply = echo_reply) -> None:
        self.latency_s = latency_s
        self.reply = reply
        self.requests = 0
        self.by_prompt: Counter[str] = Counter()
        self.auth_headers: list[str] = []
        self.start_times: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._httpd.handle_error = lambda request, client_address: None  # clients hanging up is expected
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def add_faults(self, *faults: Fault) -> None:
        """Queue faults; each is used once, by the first later request it matches."""
        with self._lock:
            self._faults.extend(faults)

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _take_fault(self, messages: list[dict[str, str]]) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.match is None or fault.match in messages[-1]["content"]:
                    return self._faults.pop(i)
        return None

    def _answer(self, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        messages = body["messages"]
        with self._lock:
            self.requests += 1
            self.by_prompt[prompt_hash(messages)] += 1
            self.start_times.append(time.monotonic())
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            fault = self._take_fault(messages)
            time.sleep(self.latency_s + (fault.delay_s if fault else 0.0))
            headers = {"Content-Type": "application/json"}
            if fault and fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            if fault and fault.body is not None:
                return fault.status, headers, fault.body.encode()
            if fault and fault.status != 200:
                error = {"error": {"message": f"fake fault {fault.status}", "type": "fake", "code": fault.status}}
                return fault.status, headers, json.dumps(error).encode()
            text = self.reply(messages)
            prompt_tokens = sum(len(m["content"]) for m in messages) // 4 + 1
            completion_tokens = len(text) // 4 + 1
            payload = {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
            return 200, headers, json.dumps(payload).encode()
        finally:
            with self._lock:
                self.in_flight -= 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                server.auth_headers.append(self.headers.get("Authorization", ""))
                if not self.path.endswith("/chat/completions"):
                    status, headers, data = 404, {"Content-Type": "application/json"}, b'{"error": {"message": "no"}}'
                else:
                    status, headers, data = server._answer(body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
