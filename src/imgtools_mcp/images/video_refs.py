"""Resolve a `video` reference (file under the input roots, data URL or base64, http(s) URL) to a path or bytes."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit
from urllib.request import url2pathname

from .refs import (
    OUTPUT_ID_RE,
    OUTPUT_URI_PREFIX,
    ImageRefError,
    ImageResolver,
    UrlFetchRefused,
    UrlTooLarge,
    fetch_url,
    redacted_url,
    shorten_reference,
    url_refused_reason,
)

VIDEO_FORMS = (
    "a video file path under the allowed input roots (default: the output folder), a data:video/...;base64 URL "
    "or bare base64, or an http(s) URL"
)
_DATA_URL_RE = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<payload>.*)$", re.DOTALL | re.IGNORECASE)
_SCHEME_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):")
_B64_RE = re.compile(r"^[A-Za-z0-9+/_-]+={0,2}$")
# Animated images decode like videos; octet-stream is what many uploaders call any binary.
_DATA_MIME_OK = ("video/", "image/gif", "image/webp", "image/apng", "application/octet-stream")


@dataclass(frozen=True)
class ResolvedVideo:
    """A video to decode: a file's path (PyAV opens it in place) or the bytes of a download or data URL."""

    source: Path | bytes
    kind: Literal["file", "data", "url"]
    reference: str
    size_bytes: int


async def resolve_video(
    ref: str, *, param: str, resolver: ImageResolver, max_file_bytes: int, max_download_bytes: int
) -> ResolvedVideo:
    """Same roots and URL policy as image references; files may be larger than anything sent inline."""
    ref = ref.strip()
    if not ref:
        raise ImageRefError(param, ref, f"empty reference; expected {VIDEO_FORMS}")
    shown = shorten_reference(ref, limit=160)
    if ref.startswith(OUTPUT_URI_PREFIX) or OUTPUT_ID_RE.match(ref):
        raise ImageRefError(param, ref, f"that is an image output id; expected {VIDEO_FORMS}")
    if ref[:5].lower() == "data:":
        data = _decode_data_url(ref, param, max_download_bytes)
        return ResolvedVideo(data, "data", shorten_reference(ref), len(data))
    scheme = _SCHEME_RE.match(ref)
    if scheme and scheme["scheme"].lower() in ("http", "https"):
        data = await _download(ref, param, resolver, max_download_bytes)
        return ResolvedVideo(data, "url", shorten_reference(redacted_url(ref), limit=160), len(data))
    if scheme and scheme["scheme"].lower() == "file":
        parts = urlsplit(ref)
        if parts.netloc not in ("", "localhost"):
            raise ImageRefError(param, ref, f"file:// URLs must be local, not on host {parts.netloc!r}")
        path = _file_under_roots(url2pathname(parts.path), ref, param, resolver, max_file_bytes)
        return ResolvedVideo(path, "file", shown, path.stat().st_size)
    if scheme and len(scheme["scheme"]) > 1:
        raise ImageRefError(param, ref, f"unsupported scheme {scheme['scheme']!r}; expected {VIDEO_FORMS}")
    compact = "".join(ref.split())
    # No video fits in fewer than a few hundred base64 characters, and a dot-free path that long is implausible.
    if len(compact) >= 256 and "." not in compact and _B64_RE.match(compact):
        data = _decode_base64(compact, ref, param, max_download_bytes)
        return ResolvedVideo(data, "data", shorten_reference(ref), len(data))
    path = _file_under_roots(ref, ref, param, resolver, max_file_bytes)
    return ResolvedVideo(path, "file", shown, path.stat().st_size)


def _file_under_roots(raw_path: str, ref: str, param: str, resolver: ImageResolver, max_bytes: int) -> Path:
    roots = resolver.input_roots
    if not roots:
        raise ImageRefError(param, ref, "file paths are disabled (no input roots configured)")
    try:
        path = Path(raw_path).expanduser()
        if not path.is_absolute():
            path = roots[0] / path
        # resolve() follows every symlink, so a link inside a root pointing outside is caught here.
        real = path.resolve()
        is_file = real.is_file()
    except (OSError, RuntimeError, ValueError) as exc:
        raise ImageRefError(param, ref, f"not a usable file path ({exc})") from exc
    if not any(real.is_relative_to(root) for root in roots):
        listed = ", ".join(str(root) for root in roots)
        raise ImageRefError(param, ref, f"path is outside the allowed input roots ({listed})")
    if not is_file:
        raise ImageRefError(param, ref, f"no such file under the allowed input roots; expected {VIDEO_FORMS}")
    size = real.stat().st_size
    if size > max_bytes:
        raise ImageRefError(param, ref, f"file is {_mb(size)}, over the {_mb(max_bytes)} limit for videos")
    return real


def _decode_data_url(ref: str, param: str, max_bytes: int) -> bytes:
    match = _DATA_URL_RE.match(ref)
    if match is None:
        raise ImageRefError(param, ref, "malformed data URL; expected data:video/<type>;base64,<data>")
    mime = match["mime"].strip().lower()
    if not mime.startswith(_DATA_MIME_OK):
        raise ImageRefError(param, ref, f"data URL type {mime or '(none)'!r} is not video/* (or an animated image)")
    if "base64" not in (part.strip().lower() for part in match["params"].split(";")):
        raise ImageRefError(param, ref, "only base64 data URLs are supported (data:video/<type>;base64,...)")
    return _decode_base64("".join(match["payload"].split()), ref, param, max_bytes)


def _decode_base64(compact: str, ref: str, param: str, max_bytes: int) -> bytes:
    if len(compact) * 3 // 4 > max_bytes:
        raise ImageRefError(param, ref, f"encoded video is over the {_mb(max_bytes)} limit for inline videos")
    compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageRefError(param, ref, f"corrupt base64 ({exc})") from exc


async def _download(url: str, param: str, resolver: ImageResolver, max_bytes: int) -> bytes:
    """The same URL policy as images (public hosts only unless allowed, every hop checked, one refusal text)."""
    shown = redacted_url(url)
    if not resolver.allow_urls:
        raise ImageRefError(param, shown, "http(s) URLs are disabled on this server")
    timeout = resolver.url_timeout_s * 4  # videos are bigger than images; still bounded as a whole
    try:
        return await fetch_url(
            url, policy=resolver.url_policy, max_bytes=max_bytes, timeout_s=timeout, accept="video/*, image/gif"
        )
    except UrlTooLarge as exc:
        raise ImageRefError(param, shown, str(exc)) from exc
    except UrlFetchRefused as exc:
        raise ImageRefError(param, shown, url_refused_reason(timeout)) from exc


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
