"""VLMClient: describe images and videos, critique and revise prompts through an OpenAI-compatible VLM."""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import anyio.abc
import httpx
import openai
from PIL import Image
from pydantic import BaseModel

from . import media
from .errors import VLMBadReply, VLMConfigError, VLMError, VLMRateLimited, VLMTimeout, VLMUnavailable
from .prompts import render_prompt
from .providers import pick_provider
from .replies import KEY_HINT, answer_text, error_detail, error_for_status, parse_json_answer, usage_from_body
from .schemas import Critique, CritiqueResult, Revision, RevisionResult, VLMText, VLMUsage, strict_json_schema

if TYPE_CHECKING:
    from .grounding import GroundingResult

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
DEFAULT_MODEL = "qwen/qwen3.5-35b-a3b"
DEFAULT_DESCRIBE_QUESTION = "Describe the image(s) in detail."
DEFAULT_VIDEO_QUESTION = "Describe the video in detail."

# Problems with a 200 reply that a fresh attempt can fix; HTTP-level failures were already retried
# by the openai client and are not retried again here.
_REPLY_PROBLEMS = (VLMBadReply, VLMUnavailable, VLMRateLimited, VLMTimeout)
_Schema = TypeVar("_Schema", bound=BaseModel)
_T = TypeVar("_T")
# Called while a call waits for the VLM: (seconds waited, seconds allowed). Hosts reset their timeouts on progress.
WaitCallback = Callable[[float, float], Awaitable[None]]
WAIT_REPORT_S = 2.0


@dataclass
class _CallCount:
    """HTTP requests sent and chat completions asked for within one task call: their difference is the retries."""

    sent: int = 0
    asked: int = 0

    @property
    def retries(self) -> int:
        return max(0, self.sent - self.asked)


_current_call: contextvars.ContextVar[_CallCount | None] = contextvars.ContextVar("vlm_call", default=None)


async def _count_request(_request: httpx.Request) -> None:
    count = _current_call.get()
    if count is not None:
        count.sent += 1


def _retries_text(retries: int) -> str:
    return f"{retries} retr{'y' if retries == 1 else 'ies'}"


class VLMClient:
    """One configured VLM endpoint. Built once (in the server lifespan); the HTTP client is created on
    first use, so a missing key only fails the VLM tools, never startup or the image tools."""

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        model: str = DEFAULT_MODEL,
        api_key: str | None = None,
        provider: Literal["auto", "openrouter", "openai"] = "auto",
        timeout: float = 120.0,
        max_retries: int = 3,
        attempt_timeout: float | None = None,
        wait_report_s: float = WAIT_REPORT_S,
        app_url: str | None = "https://pypi.org/project/imgtools-mcp/",
        app_title: str | None = "imgtools-mcp",
        image_max_pixels: int = media.DEFAULT_IMAGE_MAX_PIXELS,
        image_format: media.ImageFormat = "auto",
        max_output_tokens: int = 2048,
        reasoning_max_tokens: int | None = 1024,
        json_attempts: int = 3,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        """`provider` "auto" means OpenRouter when the base URL is on openrouter.ai, otherwise a plain
        OpenAI-compatible server. `timeout` bounds each call (describe, critique, ...) as a whole, retries
        included; `attempt_timeout` (default: the same) bounds one HTTP attempt, so 429/5xx/connection failures are
        retried by the openai client within what is left. `reasoning_max_tokens` bounds a thinking model's reasoning on
        OpenRouter (0 turns reasoning off, None leaves the model's default). `json_attempts` is how many
        replies a critique or revision may take to produce valid JSON. `extra_body` is merged into every
        request for server-specific options (for example vLLM's `chat_template_kwargs`)."""
        if not model:
            raise ValueError("model must be a non-empty model id, for example 'qwen/qwen3.5-35b-a3b'")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if attempt_timeout is not None and not attempt_timeout > 0:
            raise ValueError(f"attempt_timeout must be > 0 seconds, got {attempt_timeout}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if max_output_tokens < 1:
            raise ValueError(f"max_output_tokens must be >= 1, got {max_output_tokens}")
        if reasoning_max_tokens is not None and reasoning_max_tokens < 0:
            raise ValueError(f"reasoning_max_tokens must be >= 0 or None, got {reasoning_max_tokens}")
        if json_attempts < 1:
            raise ValueError(f"json_attempts must be >= 1, got {json_attempts}")
        if image_max_pixels < 1:
            raise ValueError(f"image_max_pixels must be >= 1, got {image_max_pixels}")
        if image_format not in ("auto", "jpeg", "png"):
            raise ValueError(f"image_format must be 'auto', 'jpeg' or 'png', got {image_format!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.provider = pick_provider(provider, self.base_url)
        self.timeout = timeout
        self.attempt_timeout = min(attempt_timeout or timeout, timeout)
        self.max_retries = max_retries
        self.wait_report_s = wait_report_s
        self.image_max_pixels = image_max_pixels
        self.image_format = image_format
        self.max_output_tokens = max_output_tokens
        self.reasoning_max_tokens = reasoning_max_tokens
        self.json_attempts = json_attempts
        self._api_key = api_key or None
        self._headers = self.provider.headers(app_url=app_url, app_title=app_title)
        self._extra_body = dict(extra_body or {})
        self._client: openai.AsyncOpenAI | None = None

    # -- lifecycle and introspection -------------------------------------------------------------

    @property
    def configured(self) -> bool:
        """Whether calls can be made at all (a key is set, or the server does not need one)."""
        return bool(self._api_key or self.provider.placeholder_key)

    def summary(self) -> dict[str, Any]:
        """Configuration for engine_status / doctor; never includes the key itself."""
        return {
            "provider": self.provider.id,
            "base_url": self.base_url,
            "model": self.model,
            "api_key_set": self._api_key is not None,
            "configured": self.configured,
            "timeout_s": self.timeout,
            "attempt_timeout_s": self.attempt_timeout,
            "max_retries": self.max_retries,
        }

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __aenter__(self) -> VLMClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def list_models(self) -> list[str]:
        """Model ids the server offers: a cheap reachability check for `doctor`. (OpenRouter lists
        models without checking the key, so there this does not prove the key works.)"""
        with self._mapped_errors():
            page = await self._openai().models.list()
        return [model.id for model in page.data]

    # -- the four tasks ---------------------------------------------------------------------------

    async def _bounded(self, work: Callable[[], Awaitable[_T]], on_wait: WaitCallback | None) -> _T:
        """One task call within `timeout` in all (retries included), reporting the wait every `wait_report_s`;
        errors say how many retries really happened."""
        count = _CallCount()
        token = _current_call.set(count)
        started = time.monotonic()
        result: list[_T] = []
        failure: list[Exception] = []

        async def report() -> None:
            assert on_wait is not None
            while True:
                await anyio.sleep(self.wait_report_s)
                await on_wait(time.monotonic() - started, self.timeout)

        async def run(group: anyio.abc.TaskGroup) -> None:
            # The outcome is kept rather than raised here, so a VLMError reaches the caller as itself, not
            # wrapped in the task group's ExceptionGroup.
            try:
                result.append(await work())
            except Exception as err:  # noqa: BLE001 - re-raised unchanged below
                failure.append(err)
            finally:
                group.cancel_scope.cancel()

        try:
            with anyio.move_on_after(self.timeout) as deadline:
                async with anyio.create_task_group() as group:
                    if on_wait is not None:
                        group.start_soon(report)
                    group.start_soon(run, group)
        finally:
            _current_call.reset(token)
        if failure:
            raise failure[0]
        if deadline.cancelled_caught and not result:
            raise VLMTimeout(
                f"no answer from the VLM at {self.base_url} within {self.timeout:g} s "
                f"(IMGTOOLS_VLM_TIMEOUT_S; {_retries_text(count.retries)} made)"
            )
        return result[0]

    async def describe(
        self, images: Sequence[Image.Image], question: str | None = None, *, on_wait: WaitCallback | None = None
    ) -> VLMText:
        """Free-text description of one or more images, or an answer to `question` about them."""
        return await self._bounded(lambda: self._describe(images, question), on_wait)

    async def _describe(self, images: Sequence[Image.Image], question: str | None) -> VLMText:
        if not images:
            raise ValueError("images must contain at least one image")
        content: list[dict[str, Any]] = [
            _text(render_prompt("describe", count=len(images), question=question or DEFAULT_DESCRIBE_QUESTION))
        ]
        for number, part in enumerate(await self._image_parts(images), start=1):
            if len(images) > 1:
                content.append(_text(f"image {number}:"))
            content.append(part)
        text, model, usage = await self._ask_text([{"role": "user", "content": content}], temperature=0.2)
        return VLMText(text=text, model=model, usage=usage)

    async def describe_frames(
        self,
        frames: Sequence[tuple[float, Image.Image]],
        question: str | None = None,
        *,
        duration_s: float | None = None,
        on_wait: WaitCallback | None = None,
    ) -> VLMText:
        """Describe a video from sampled `(timestamp_s, image)` frames; each image follows a "t=1.50s" label."""
        return await self._bounded(lambda: self._describe_frames(frames, question, duration_s), on_wait)

    async def _describe_frames(
        self, frames: Sequence[tuple[float, Image.Image]], question: str | None, duration_s: float | None
    ) -> VLMText:
        if not frames:
            raise ValueError("frames must contain at least one frame")
        duration = duration_s if duration_s is not None else max(timestamp for timestamp, _ in frames)
        content: list[dict[str, Any]] = [
            _text(
                render_prompt(
                    "describe_video",
                    count=len(frames),
                    duration=f"{duration:.1f}",
                    question=question or DEFAULT_VIDEO_QUESTION,
                )
            )
        ]
        parts = await self._image_parts([image for _, image in frames])
        for (timestamp, _), part in zip(frames, parts, strict=True):
            content.append(_text(f"t={timestamp:.2f}s"))
            content.append(part)
        text, model, usage = await self._ask_text([{"role": "user", "content": content}], temperature=0.2)
        return VLMText(text=text, model=model, usage=usage)

    async def critique(
        self,
        image: Image.Image,
        goal: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        on_wait: WaitCallback | None = None,
    ) -> CritiqueResult:
        """Score `image` against `goal` (0-10) with problems, a revised prompt and parameter advice."""
        return await self._bounded(lambda: self._critique(image, goal, parameters), on_wait)

    async def _critique(self, image: Image.Image, goal: str, parameters: Mapping[str, Any] | None) -> CritiqueResult:
        if not goal or not goal.strip():
            raise ValueError("goal must describe what the image was generated for")
        prompt = render_prompt("critique", goal=goal.strip(), parameters=_as_json(parameters or {}))
        messages = [{"role": "user", "content": [_text(prompt), *await self._image_parts([image])]}]
        critique, model, usage = await self._ask_json(messages, Critique, name="critique", temperature=0.0)
        return CritiqueResult(critique=critique, model=model, usage=usage)

    async def revise(
        self, goal: str, history: Sequence[Mapping[str, Any] | BaseModel], *, on_wait: WaitCallback | None = None
    ) -> RevisionResult:
        """The next prompt and settings to try (Idea2Img): the model sees every earlier round, with
        its prompt, parameters, score and problems, so it does not repeat what already failed.

        Each history entry is a mapping (or pydantic model) such as
        `{"prompt", "negative_prompt", "parameters", "score", "problems"}`; other keys are shown too."""
        return await self._bounded(lambda: self._revise(goal, history), on_wait)

    async def _revise(self, goal: str, history: Sequence[Mapping[str, Any] | BaseModel]) -> RevisionResult:
        if not goal or not goal.strip():
            raise ValueError("goal must describe what the image should show")
        if not history:
            raise ValueError("history must contain at least one round (prompt, parameters, score, problems)")
        rounds = [entry.model_dump(mode="json") if isinstance(entry, BaseModel) else dict(entry) for entry in history]
        rendered = "\n".join(f"Round {number}: {_as_json(entry)}" for number, entry in enumerate(rounds, start=1))
        prompt = render_prompt("revise", goal=goal.strip(), history=rendered, rounds=len(rounds))
        messages = [{"role": "user", "content": [_text(prompt)]}]
        revision, model, usage = await self._ask_json(messages, Revision, name="revision", temperature=0.4)
        return RevisionResult(revision=revision, model=model, usage=usage)

    async def ground(
        self, image: Image.Image, description: str, *, on_wait: WaitCallback | None = None
    ) -> GroundingResult:
        """Boxes (0-1000 grid, Qwen3-VL convention) of the objects in `image` that `description` names; may be empty."""
        return await self._bounded(lambda: self._ground(image, description), on_wait)

    async def _ground(self, image: Image.Image, description: str) -> GroundingResult:
        from .grounding import Grounding, GroundingResult

        if not description or not description.strip():
            raise ValueError("description must say what to find")
        prompt = render_prompt("ground", description=description.strip())
        messages = [{"role": "user", "content": [_text(prompt), *await self._image_parts([image])]}]
        grounding, model, usage = await self._ask_json(messages, Grounding, name="grounding", temperature=0.0)
        return GroundingResult(grounding=grounding, model=model, usage=usage)

    # -- request plumbing ---------------------------------------------------------------------------

    def _openai(self) -> openai.AsyncOpenAI:
        if self._client is None:
            key = self._api_key or self.provider.placeholder_key
            if not key:
                raise VLMConfigError(f"no API key for the VLM at {self.base_url}: {KEY_HINT}")
            # Retries (408/409/429/5xx, connection errors, honouring Retry-After) are the openai client's.
            self._client = openai.AsyncOpenAI(
                api_key=key,
                base_url=self.base_url,
                timeout=self.attempt_timeout,
                max_retries=self.max_retries,
                default_headers=self._headers or None,
                # Every attempt the client sends is counted, so errors say how many retries really happened.
                http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [_count_request]}),
            )
        return self._client

    async def _image_parts(self, images: Sequence[Image.Image]) -> list[dict[str, Any]]:
        """`image_url` parts; resizing and encoding run in a worker thread to keep the event loop free."""

        def encode() -> list[dict[str, Any]]:
            urls = [
                media.image_to_data_url(image, max_pixels=self.image_max_pixels, image_format=self.image_format)
                for image in images
            ]
            return [{"type": "image_url", "image_url": {"url": url}} for url in urls]

        return await anyio.to_thread.run_sync(encode)

    @contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        """Turn the openai package's exceptions into this package's VLMError hierarchy."""
        try:
            yield
        except openai.APITimeoutError as err:
            raise VLMTimeout(
                f"no answer from the VLM at {self.base_url} within {self.attempt_timeout:g} s per attempt "
                f"(IMGTOOLS_VLM_TIMEOUT_S; {_retries_text(self._retries())} made)"
            ) from err
        except openai.APIConnectionError as err:
            cause = err.__cause__ or err
            raise VLMUnavailable(
                f"could not reach the VLM at {self.base_url}: {cause} ({_retries_text(self._retries())} made)"
            ) from err
        except openai.APIStatusError as err:
            raise error_for_status(
                err.status_code, error_detail(err.body), model=self.model, retries=self._retries()
            ) from err

    @staticmethod
    def _retries() -> int:
        count = _current_call.get()
        return count.retries if count is not None else 0

    async def _post(
        self, messages: list[dict[str, Any]], *, temperature: float, response_format: dict[str, Any] | None
    ) -> Any:
        """One chat completion (with the client's HTTP retries); returns the decoded JSON body."""
        client = self._openai()
        provider_body = self.provider.extra_body(
            json_schema=response_format is not None, reasoning_max_tokens=self.reasoning_max_tokens
        )
        extra_body = _merge(provider_body, self._extra_body)
        arguments: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": self.provider.max_tokens(self.max_output_tokens, self.reasoning_max_tokens),
        }
        if response_format is not None:
            arguments["response_format"] = response_format
        count = _current_call.get()
        if count is not None:
            count.asked += 1
        with self._mapped_errors():
            # The raw response, not the parsed ChatCompletion: OpenRouter's error objects, `usage.cost`
            # and other non-OpenAI fields must be read as sent.
            raw = await client.chat.completions.with_raw_response.create(**arguments, extra_body=extra_body or None)
        try:
            return json.loads(raw.content)
        except ValueError:
            return None  # answer_text reports it as a bad reply, which is retried

    async def _ask_text(self, messages: list[dict[str, Any]], *, temperature: float) -> tuple[str, str, VLMUsage]:
        """Text answer; an empty or failed 200 reply is retried once."""
        usage = VLMUsage()
        problem: VLMError | None = None
        for _attempt in range(2):
            body = await self._post_counted(messages, usage, temperature=temperature, response_format=None)
            usage += usage_from_body(body)
            try:
                text, _finish_reason = answer_text(body, model=self.model)
            except _REPLY_PROBLEMS as err:
                problem = err
                continue
            except VLMError as err:
                _with_usage(err, usage)
                raise
            return text, _reply_model(body, self.model), usage
        assert problem is not None
        raise _with_usage(problem, usage, note="after 2 tries")

    async def _ask_json(
        self, messages: list[dict[str, Any]], schema: type[_Schema], *, name: str, temperature: float
    ) -> tuple[_Schema, str, VLMUsage]:
        """A schema-validated answer. An invalid reply is retried (the model is told what was wrong)
        up to `json_attempts` replies in all, then reported; it is never patched up or guessed."""
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": name, "strict": True, "schema": strict_json_schema(schema)},
        }
        conversation = list(messages)
        usage = VLMUsage()
        problem: VLMError | None = None
        for _attempt in range(self.json_attempts):
            body = await self._post_counted(
                conversation, usage, temperature=temperature, response_format=response_format
            )
            usage += usage_from_body(body)
            try:
                text, finish_reason = answer_text(body, model=self.model)
            except _REPLY_PROBLEMS as err:
                problem = err
                continue
            except VLMError as err:
                _with_usage(err, usage)
                raise
            try:
                result = parse_json_answer(text, schema, finish_reason=finish_reason)
            except VLMBadReply as err:
                problem = err
                # The same request at temperature 0 would likely get the same reply: say what broke.
                conversation = [
                    *messages,
                    {"role": "assistant", "content": text[:4000]},
                    {
                        "role": "user",
                        "content": f"That reply could not be used: {err.message}. "
                        "Answer again with only the JSON object, following the schema exactly.",
                    },
                ]
                continue
            return result, _reply_model(body, self.model), usage  # type: ignore[return-value]
        assert problem is not None
        raise _with_usage(problem, usage, note=f"after {self.json_attempts} tries")

    async def _post_counted(
        self,
        messages: list[dict[str, Any]],
        usage: VLMUsage,
        *,
        temperature: float,
        response_format: dict[str, Any] | None,
    ) -> Any:
        """`_post`, with the usage spent so far attached to any error (HTTP errors were already retried)."""
        try:
            return await self._post(messages, temperature=temperature, response_format=response_format)
        except VLMError as err:
            _with_usage(err, usage)
            raise


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _as_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, sort_keys=False)


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` wins; nested dicts (e.g. `provider`) are merged one level deep rather than replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _reply_model(body: Any, default: str) -> str:
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) and model else default


def _with_usage(err: VLMError, usage: VLMUsage, *, note: str | None = None) -> VLMError:
    """Attach what was spent so far to the error (the caller reports it even on failure)."""
    err.usage = usage
    if note:
        err.message = f"{err.message} ({note})"
        err.args = (err.message,)
    return err
