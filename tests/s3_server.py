"""A real S3-compatible server for the tests: moto's own S3 WSGI application (what `moto_server`
serves) on 127.0.0.1 in a thread of the test process, behind a thin middleware that records each
request (so tests can prove ranged reads) and can answer like a store under stress: throttling
(503 SlowDown) for the next N requests, or access denied for keys under a prefix."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from urllib.parse import unquote

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")
DENIED = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
          "<Message>Access Denied</Message></Error>")


@dataclass
class Request:
    method: str
    path: str  # /bucket/key
    query: str
    range: str | None
    status: str = ""
    sent: int = 0  # response body bytes


@dataclass
class S3Server:
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    throttle_next: int = 0
    denied_prefix: str | None = None  # "/bucket/key-prefix"
    denied_code: str = "AccessDenied"  # or what a store says to unknown credentials: InvalidAccessKeyId

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.app = DomainDispatcherApplication(create_backend_app)
        self.server = make_server("127.0.0.1", 0, self.middleware, threaded=True, request_handler=MotoRequestHandler)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, name="moto-s3", daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        """What a client needs, the standard way: an endpoint and credentials in the environment."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join()

    def middleware(self, environ, start_response):
        request = Request(environ["REQUEST_METHOD"], unquote(environ.get("PATH_INFO", "")),
                          environ.get("QUERY_STRING", ""), environ.get("HTTP_RANGE"))
        with self.lock:
            self.requests.append(request)
            throttled = self.throttle_next > 0
            if throttled:
                self.throttle_next -= 1
        denied = self.denied_prefix is not None and request.path.startswith(self.denied_prefix)
        if throttled or denied:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            if length:
                environ["wsgi.input"].read(length)  # read the body, so the client sees an answer
            status, body = ("503 Slow Down", SLOWDOWN) if throttled else ("403 Forbidden", DENIED.format(code=self.denied_code).encode())
            body = b"" if request.method == "HEAD" else body
            request.status, request.sent = status, len(body)
            start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
            return [body]

        def record_status(status, headers, exc_info=None):
            request.status = status
            return start_response(status, headers, exc_info)

        def body():
            for chunk in self.app(environ, record_status):
                request.sent += len(chunk)
                yield chunk

        return body()

    def bytes_sent(self, key_suffix: str, method: str = "GET") -> int:
        with self.lock:
            return sum(r.sent for r in self.requests if r.method == method and r.path.endswith(key_suffix))

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
