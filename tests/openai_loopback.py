"""A real OpenAI-compatible chat-completions server on 127.0.0.1 that tests can script to misbehave.

It checks each request's shape, decodes every image it is sent and answers from the pixels.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import Image, ImageStat

CHAT_PATHS = ("/v1/chat/completions", "/api/v1/chat/completions")
MODELS_PATHS = ("/v1/models", "/api/v1/models")
# Fields only OpenRouter understands; OpenAI itself answers 400 "Unrecognized request argument".
OPENROUTER_ONLY_FIELDS = frozenset({"provider", "usage", "reasoning", "transforms", "models", "route", "plugins"})
_DATA_URL = re.compile(r"^data:image/(png|jpeg|jpg|webp|gif);base64,(.+)$", re.DOTALL)

Scorer = Callable[[Image.Image], float]


def brightness_score(image: Image.Image) -> float:
    """Default critique scorer: mean brightness mapped to 0-10 (black 0, white 10)."""
    return round(ImageStat.Stat(image.convert("L")).mean[0] / 255 * 10, 2)


@dataclass(frozen=True)
class Scripted:
    """How to answer one chat request instead of normally. Build with the class methods."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: Any = None  # whole JSON body (or raw bytes) replacing the normal one
    content: str | None = None  # message content replacing the normal answer
    finish_reason: str = "stop"
    delay_s: float = 0.0
    choice_error: dict[str, Any] | None = None  # an `error` inside choices[0], finish_reason "error"

    @classmethod
    def http_error(cls, status: int, message: str | None = None, *, retry_after: float | None = None) -> Scripted:
        headers = (("Retry-After", f"{retry_after:g}"),) if retry_after is not None else ()
        error = {"message": message or f"loopback says {status}", "type": "loopback_error", "code": status}
        return cls(status=status, headers=headers, body={"error": error})

    @classmethod
    def delay(cls, seconds: float) -> Scripted:
        return cls(delay_s=seconds)

    @classmethod
    def reply(cls, content: str, *, finish_reason: str = "stop") -> Scripted:
        return cls(content=content, finish_reason=finish_reason)

    @classmethod
    def error_in_200(cls, code: int = 502, message: str = "upstream provider error") -> Scripted:
        return cls(body={"error": {"code": code, "message": message, "metadata": {"provider_name": "Loopback"}}})

    @classmethod
    def error_in_choice(cls, code: int = 502, message: str = "provider disconnected mid-answer") -> Scripted:
        return cls(choice_error={"code": code, "message": message})


@dataclass
class RecordedRequest:
    """One request as the server saw it, plus what it answered."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any = None
    images: list[Image.Image] = field(default_factory=list)
    image_formats: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    status: int = 0  # 0 while the answer is still being prepared
    usage: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        """'critique', 'revision' (the json_schema name), 'describe' for text answers, or 'models'."""
        if self.path in MODELS_PATHS:
            return "models"
        response_format = (self.body or {}).get("response_format") or {}
        if response_format.get("type") == "json_schema":
            return str(response_format.get("json_schema", {}).get("name"))
        return "describe"

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        return [image.size for image in self.images]


class OpenAILoopback:
    """`with OpenAILoopback() as server:` then point a client at `server.base_url` (plain OpenAI-style)
    or `server.openrouter_base_url` (OpenRouter-style: /api/v1, reports cost, accepts its fields)."""

    def __init__(
        self,
        *,
        api_key: str | None = "test-key",
        scorer: Scorer = brightness_score,
        revision: dict[str, Any] | Callable[[RecordedRequest], dict[str, Any]] | None = None,
        model_name: str | None = None,
        regions: list[dict[str, Any]] | Callable[[RecordedRequest], list[dict[str, Any]]] | None = None,
    ) -> None:
        """`api_key` None accepts any key (like a local server); `scorer` computes critique scores from the
        last image received; `revision` is the revision JSON to return (or a function of the request);
        `regions` the critique's problem regions (or a function of the request; None: the field is left out)."""
        self.api_key = api_key
        self.scorer = scorer
        self.revision = revision
        self.regions = regions
        self.model_name = model_name
        self._lock = threading.Lock()
        self._script: list[Scripted] = []
        self._requests: list[RecordedRequest] = []
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> OpenAILoopback:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.0: one request per connection, so no keep-alive thread outlives the server.
            protocol_version = "HTTP/1.0"

            def do_POST(self) -> None:
                owner._handle(self)

            def do_GET(self) -> None:
                owner._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        # Binding happens here, so the port accepts connections before serve_forever even starts.
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closing.set()  # wakes handlers sleeping in a scripted delay
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        assert self._server is not None, "use the server inside `with`"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def openrouter_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    # -- test-facing API --------------------------------------------------------------------------

    def script(self, steps: Iterable[Scripted]) -> None:
        """Answer the next chat requests with these steps, in order; afterwards answer normally."""
        with self._lock:
            self._script.extend(steps)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [request for request in self.requests if request.path in CHAT_PATHS]

    @property
    def problems(self) -> list[str]:
        """Every shape problem found in any request (empty for a well-behaved client)."""
        return [problem for request in self.requests for problem in request.problems]

    # -- serving ----------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        record = RecordedRequest(
            method=handler.command,
            path=handler.path.split("?", 1)[0],
            headers={name.lower(): value for name, value in handler.headers.items()},
        )
        # Logged on arrival, so a test sees a request its client already gave up on (a timeout).
        with self._lock:
            self._requests.append(record)
        try:
            status, headers, payload = self._answer(handler, record)
        except Exception as err:  # a bug in the loopback must show up in the test, not hang it
            record.problems.append(f"loopback crashed: {err!r}")
            status, headers, payload = 500, {}, _json_bytes({"error": {"message": repr(err)}})
        record.status = status
        try:
            handler.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except OSError:
            pass  # the client gave up (its timeout) before the answer; that is what the test wanted

    def _answer(self, handler: BaseHTTPRequestHandler, record: RecordedRequest) -> tuple[int, dict[str, str], bytes]:
        if record.path in MODELS_PATHS and record.method == "GET":
            if (denied := self._check_auth(record)) is not None:
                return denied
            model = self.model_name or "loopback/model"
            listing = {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "loopback"}]}
            return 200, {}, _json_bytes(listing)
        if record.path not in CHAT_PATHS or record.method != "POST":
            return 404, {}, _json_bytes({"error": {"message": f"no route {record.method} {record.path}", "code": 404}})

        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length)
        try:
            record.body = json.loads(raw)
        except ValueError:
            record.problems.append("request body is not JSON")
            return 400, {}, _json_bytes({"error": {"message": "body is not JSON", "code": 400}})

        openrouter = record.path.startswith("/api/")
        self._check_body(record, openrouter=openrouter)
        with self._lock:
            step = self._script.pop(0) if self._script else None

        if step is not None and step.delay_s:
            self._closing.wait(step.delay_s)
        if (denied := self._check_auth(record)) is not None:
            return denied
        if step is not None and step.status != 200:
            return step.status, dict(step.headers), _json_bytes(step.body)
        if record.problems:
            message = "; ".join(record.problems)
            return 400, {}, _json_bytes({"error": {"message": message, "type": "invalid_request_error", "code": 400}})
        if step is not None and step.body is not None:
            return 200, dict(step.headers), step.body if isinstance(step.body, bytes) else _json_bytes(step.body)

        content = step.content if step is not None and step.content is not None else self._content(record)
        finish_reason = step.finish_reason if step is not None else "stop"
        message = {"role": "assistant", "content": content}
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish_reason}
        if step is not None and step.choice_error is not None:
            message["content"] = ""
            choice.update(finish_reason="error", error=step.choice_error)
        usage = self._usage(record, choice["message"]["content"], openrouter=openrouter)
        record.usage = usage
        body = {
            "id": f"chatcmpl-loopback-{id(record):x}",
            "object": "chat.completion",
            "created": 0,
            "model": self.model_name or record.body.get("model"),
            "choices": [choice],
            "usage": usage,
        }
        if openrouter:
            body["provider"] = "Loopback"
        return 200, dict(step.headers) if step is not None else {}, _json_bytes(body)

    def _check_auth(self, record: RecordedRequest) -> tuple[int, dict[str, str], bytes] | None:
        authorization = record.headers.get("authorization", "")
        if not authorization.startswith("Bearer ") or not authorization[7:].strip():
            record.problems.append("no bearer token in Authorization")
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            error = {"message": "Invalid API key", "type": "invalid_request_error", "code": 401}
            return 401, {}, _json_bytes({"error": error})
        return None

    def _check_body(self, record: RecordedRequest, *, openrouter: bool) -> None:
        body, problems = record.body, record.problems
        if not isinstance(body, dict):
            problems.append("body is not a JSON object")
            return
        if not isinstance(body.get("model"), str) or not body["model"]:
            problems.append("model missing")
        if not openrouter:
            for name in sorted(OPENROUTER_ONLY_FIELDS & body.keys()):
                problems.append(f"Unrecognized request argument supplied: {name}")
        for name in ("max_tokens", "max_completion_tokens"):
            if name in body and not (isinstance(body[name], int) and body[name] > 0):
                problems.append(f"{name} must be a positive integer")
        temperature = body.get("temperature", 1)
        if not (isinstance(temperature, (int, float)) and 0 <= temperature <= 2):
            problems.append("temperature must be between 0 and 2")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            problems.append("messages must be a non-empty list")
            return
        for index, message in enumerate(messages):
            self._check_message(record, index, message)
        if "response_format" in body:
            _check_response_format(body["response_format"], problems)

    def _check_message(self, record: RecordedRequest, index: int, message: Any) -> None:
        problems = record.problems
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user", "assistant"):
            problems.append(f"messages[{index}] has no valid role")
            return
        content = message.get("content")
        if isinstance(content, str):
            record.texts.append(content)
            return
        if not isinstance(content, list) or not content:
            problems.append(f"messages[{index}].content must be a string or a non-empty list of parts")
            return
        for part_index, part in enumerate(content):
            where = f"messages[{index}].content[{part_index}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                record.texts.append(part["text"])
            elif kind == "image_url" and isinstance(part.get("image_url"), dict):
                self._decode_image(record, where, part["image_url"])
            else:
                problems.append(f"{where} is not a valid text or image_url part")

    def _decode_image(self, record: RecordedRequest, where: str, image_url: dict[str, Any]) -> None:
        url = image_url.get("url")
        match = _DATA_URL.match(url) if isinstance(url, str) else None
        if match is None:
            record.problems.append(f"{where}.image_url.url is not a base64 data:image URL")
            return
        if image_url.get("detail", "auto") not in ("auto", "low", "high"):
            record.problems.append(f"{where}.image_url.detail must be auto, low or high")
        try:
            image = Image.open(io.BytesIO(base64.b64decode(match.group(2), validate=True)))
            image.load()
        except (binascii.Error, OSError) as err:
            record.problems.append(f"{where} does not decode to an image: {err}")
            return
        declared = "jpeg" if match.group(1) == "jpg" else match.group(1)
        if (image.format or "").lower() != declared:
            record.problems.append(f"{where} says image/{declared} but holds {image.format}")
        record.images.append(image)
        record.image_formats.append(declared)

    # -- answers computed from the request -------------------------------------------------------

    def _content(self, record: RecordedRequest) -> str:
        kind = record.kind
        if kind == "critique":
            return json.dumps(self._critique(record))
        if kind == "revision":
            revision = self.revision(record) if callable(self.revision) else self.revision
            return json.dumps(revision or _default_revision(record))
        if kind == "grounding":
            return json.dumps(_grounding(record))
        if kind != "describe":
            record.problems.append(f"unknown json_schema name {kind!r}")
        if not record.images:
            return "no images received"
        facts = [f"image {number}: {_image_facts(image)}" for number, image in enumerate(record.images, start=1)]
        return "; ".join(facts)

    def _critique(self, record: RecordedRequest) -> dict[str, Any]:
        if not record.images:
            record.problems.append("critique request without an image")
            score = 0.0
        else:
            score = max(0.0, min(10.0, float(self.scorer(record.images[-1]))))
        critique: dict[str, Any] = {
            "summary": f"scored {score:.2f} from {_image_facts(record.images[-1]) if record.images else 'nothing'}",
            "problems": ["too dark"] if score < 5 else [],
            "prompt_adherence": score,
            "visual_quality": score,
            "score": score,
            "revised_prompt": "the same subject, brightly lit",
            "negative_prompt_additions": ["dark", "underexposed"] if score < 5 else [],
            "parameter_advice": {
                "steps": 30, "guidance_scale": 7.0, "sampler": "euler_a", "strength": None, "notes": None
            },
        }
        if self.regions is not None:
            critique["regions"] = self.regions(record) if callable(self.regions) else self.regions
        return critique

    def _usage(self, record: RecordedRequest, content: str, *, openrouter: bool) -> dict[str, Any]:
        text_chars = sum(len(text) for text in record.texts)
        prompt_tokens = 10 + text_chars // 4 + sum(max(1, w * h // 784) for w, h in record.image_sizes)
        completion_tokens = max(1, len(content) // 4)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if openrouter:
            # OpenRouter reports the charge in credits (USD); the rates here are made up.
            usage["cost"] = round(prompt_tokens * 1e-7 + completion_tokens * 4e-7, 12)
        return usage


def _check_response_format(response_format: Any, problems: list[str]) -> None:
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        problems.append("response_format.type must be text, json_object or json_schema")
        return
    if response_format["type"] != "json_schema":
        return
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", str(spec.get("name", ""))):
        problems.append("response_format.json_schema.name must be 1-64 letters, digits, _ or -")
        return
    schema = spec.get("schema")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        problems.append("response_format.json_schema.schema must be an object schema")
        return
    if spec.get("strict"):
        _check_strict(schema, "schema", problems)


def _check_strict(node: Any, where: str, problems: list[str]) -> None:
    """OpenAI strict mode: every object closed and every property required; no unresolved $ref here."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            _check_strict(item, f"{where}[{index}]", problems)
        return
    if not isinstance(node, dict):
        return
    if "$ref" in node:
        problems.append(f"{where} uses $ref")
    if node.get("type") == "object":
        properties = node.get("properties", {})
        if node.get("additionalProperties") is not False:
            problems.append(f"{where} must set additionalProperties: false in strict mode")
        if sorted(node.get("required", [])) != sorted(properties):
            problems.append(f"{where} must list every property in required in strict mode")
        for name, sub in properties.items():
            _check_strict(sub, f"{where}.{name}", problems)
    for key in ("items", "anyOf", "allOf", "oneOf"):
        if key in node:
            _check_strict(node[key], f"{where}.{key}", problems)


def _image_facts(image: Image.Image) -> str:
    mean = ImageStat.Stat(image.convert("RGB")).mean
    return f"size={image.width}x{image.height} mean=({round(mean[0])},{round(mean[1])},{round(mean[2])})"


def _grounding(record: RecordedRequest) -> dict[str, Any]:
    """Boxes found from the pixels: the region that stands out from the image's background colour (its median),
    on Qwen3-VL's 0-1000 grid; no such region, no objects."""
    if not record.images:
        record.problems.append("grounding request without an image")
        return {"objects": []}
    pixels = np.asarray(record.images[-1].convert("RGB"), dtype=np.float32)
    background = np.median(pixels.reshape(-1, 3), axis=0)
    ys, xs = np.nonzero(np.abs(pixels - background).sum(axis=2) > 90)
    if len(xs) == 0:
        return {"objects": []}
    height, width = pixels.shape[:2]
    box = [xs.min() / width, ys.min() / height, (xs.max() + 1) / width, (ys.max() + 1) / height]
    return {"objects": [{"label": "object", "bbox_2d": [round(v * 1000) for v in box]}]}


def _default_revision(record: RecordedRequest) -> dict[str, Any]:
    rounds = sum(text.count("Round ") for text in record.texts)
    return {
        "rationale": f"seen {rounds} round(s); brighten the scene",
        "prompt": f"revised prompt after {rounds} round(s)",
        "negative_prompt": "dark, underexposed",
        "parameter_changes": {"steps": None, "guidance_scale": 6.5, "sampler": None, "strength": None, "notes": None},
    }


def _json_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()
