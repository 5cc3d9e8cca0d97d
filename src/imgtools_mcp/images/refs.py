"""Resolve every `image`/`mask` reference (output id, file, data URL or base64, http URL) to a decoded image."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urljoin, urlsplit, urlunsplit
from urllib.request import url2pathname

import anyio
import anyio.to_thread
import httpx
import numpy as np
from PIL import Image, ImageOps

SourceKind = Literal["output", "file", "data", "url"]
ImageMode = Literal["RGB", "L"]

OUTPUT_ID_RE = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{8}$")
OUTPUT_URI_PREFIX = "imgtools://images/"
ACCEPTED_FORMS = (
    "an output id or imgtools://images/<id>, a file path under the allowed input roots, "
    "a data:image/...;base64 URL or bare base64, or an http(s) URL"
)
# Only formats an assistant plausibly sends; the rest (EPS shells out to Ghostscript,
# exotic scientific formats) are attack surface with no user.
_DECODE_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
_B64_RE = re.compile(r"^[A-Za-z0-9+/_-]+={0,2}$")
# base64 of the first bytes of PNG, JPEG, GIF, RIFF (WebP), TIFF (little/big endian).
_B64_IMAGE_PREFIXES = ("iVBORw0KGgo", "/9j/", "R0lGOD", "UklGR", "SUkq", "TU0A")
_DATA_URL_RE = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<payload>.*)$", re.DOTALL | re.IGNORECASE)
_SCHEME_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):")


class ImageRefError(ValueError):
    """A reference that cannot be turned into an image; the message is one line for the tool error."""

    def __init__(self, param: str, reference: str, reason: str) -> None:
        self.param = param
        self.reference = shorten_reference(reference)
        self.reason = reason
        super().__init__(f"`{param}`: cannot use {self.reference!r}: {reason}")


@dataclass(frozen=True)
class ResolvedImage:
    image: Image.Image
    source: SourceKind
    reference: str
    sha256: str
    output_id: str | None = None


def shorten_reference(ref: str, limit: int = 60) -> str:
    """Keep errors and infotext readable when the reference is a megabyte of base64."""
    ref = ref.replace("\n", " ").replace("\r", " ")
    if len(ref) <= limit:
        return ref
    return f"{ref[: limit - 20]}…({len(ref)} chars)"


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB copy of any Pillow image: alpha composited on `background`, 16-bit/float scaled to 8-bit."""
    image = _to_8bit(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def to_mask(image: Image.Image) -> Image.Image:
    """Grayscale ("L") copy of any Pillow image for use as a mask."""
    image = _to_8bit(image)
    if image.mode == "L":
        return image
    # A mask painted as opaque strokes on a transparent layer means "repaint the strokes",
    # so transparency counts as black (keep), not white.
    return to_rgb(image, background=(0, 0, 0)).convert("L")


def _to_8bit(image: Image.Image) -> Image.Image:
    # Pillow's own I;16 -> L conversion clips at 255, turning most 16-bit images white.
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        peak = 1.0 if values.max() <= 1.0 else 255.0  # float images are 0..1 or already 0..255
    else:
        peak = 65535.0 if values.max() > 255 else 255.0  # 16-bit data, or 8-bit values in a 32-bit image
    scaled = np.clip(values * (255.0 / peak), 0, 255).round().astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


# ----- http(s) URLs: who may be fetched, and fetching only what was checked -----

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses it resolves to; injectable so tests can make any name resolve anywhere.
HostResolver = Callable[[str, int], Awaitable[list[str]]]
MAX_REDIRECTS = 5
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def redacted_url(url: str) -> str:
    """The URL without user:password@ and without its query or fragment, which is where signed URLs keep their
    secrets (X-Amz-Signature, token=, sig=): what results, sidecars and infotext may record."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return shorten_reference(url.split("?", 1)[0].split("#", 1)[0])
    if parts.scheme.lower() not in ("http", "https"):
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def is_public_address(address: IPAddress) -> bool:
    """Whether an address is on the public internet: not loopback, private, link-local (cloud metadata
    services), CGNAT, multicast, reserved or unspecified, also when hidden in an IPv6 form of an IPv4 one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


async def _system_resolve(host: str, port: int) -> list[str]:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]).split("%")[0] for info in infos]  # drop an IPv6 zone id


class UrlPolicy:
    """Which hosts an http(s) URL may reach: public addresses only, plus the hosts and networks the
    operator names in IMGTOOLS_ALLOW_PRIVATE_URLS (a LAN image server, a test server on loopback)."""

    def __init__(self, allowed: Sequence[str] = (), *, resolve: HostResolver | None = None) -> None:
        self.allowed_names: set[str] = set()
        self.allowed_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allowed:
            entry = entry.strip().lower().strip("[]")
            if not entry:
                continue
            try:
                self.allowed_networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.allowed_names.add(entry.rstrip("."))
        self._resolve = resolve or _system_resolve

    def address_allowed(self, address: IPAddress) -> bool:
        if is_public_address(address):
            return True
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        return any(candidate in network for candidate in (address, mapped) if candidate is not None
                   for network in self.allowed_networks if candidate.version == network.version)

    async def pinned_address(self, host: str, port: int) -> str | None:
        """The address to connect to for `host`, or None when the host may not be reached (or does not resolve).

        Every address the name resolves to must be allowed, so a name that resolves both to a public and to
        a private address cannot be used to reach the private one; the caller connects to the address checked
        here, never resolving the name again (a DNS-rebinding answer has no second chance).
        """
        name = host.lower().strip("[]").rstrip(".")
        try:
            literal = ipaddress.ip_address(name)
        except ValueError:
            literal = None
        if literal is not None:
            return str(literal) if name in self.allowed_names or self.address_allowed(literal) else None
        try:
            addresses = [ipaddress.ip_address(value) for value in await self._resolve(name, port)]
        except (OSError, ValueError, UnicodeError):
            return None
        if not addresses:
            return None
        if name not in self.allowed_names and not all(self.address_allowed(address) for address in addresses):
            return None
        return str(addresses[0])


class UrlFetchRefused(Exception):
    """Any fetch that did not produce a body: refused host, DNS failure, closed port, timeout, HTTP error."""


class UrlTooLarge(Exception):
    """An allowed host sent (or announced) more than the size limit; the message says how much."""


async def fetch_url(
    url: str, *, policy: UrlPolicy, max_bytes: int, timeout_s: float, accept: str
) -> bytes:
    """GET `url` within `timeout_s` in all, at most `max_bytes`, following up to 5 redirects, each hop's host
    checked by `policy` and connected to at the address checked (Host header and TLS name stay the URL's).

    Raises UrlFetchRefused for every failure that is about reaching the URL, with no detail: a closed port, a
    refused host and an HTTP 404 must read the same, or the server becomes a port scanner for its network.
    A body over the limit (which only an allowed host can send) raises UrlTooLarge, saying so.
    """
    chunks: list[bytes] = []
    received = 0
    current = url
    try:
        with anyio.fail_after(timeout_s):
            # trust_env=False: a proxy from the environment would resolve the name itself, undoing the pinning.
            async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
                for _hop in range(MAX_REDIRECTS + 1):
                    target = httpx.URL(current)
                    if target.scheme not in ("http", "https") or not target.host:
                        raise UrlFetchRefused()
                    port = target.port or (443 if target.scheme == "https" else 80)
                    address = await policy.pinned_address(target.host, port)
                    if address is None:
                        raise UrlFetchRefused()
                    host_header = target.netloc.decode("ascii").rsplit("@", 1)[-1]
                    request = client.build_request(
                        "GET",
                        target.copy_with(host=address),
                        headers={"Accept": accept, "Host": host_header},
                        extensions={"sni_hostname": target.host} if target.scheme == "https" else {},
                    )
                    response = await client.send(request, stream=True)
                    try:
                        if response.is_redirect and "location" in response.headers:
                            current = urljoin(current, response.headers["location"])
                            continue
                        if response.status_code != 200:
                            raise UrlFetchRefused()
                        declared = response.headers.get("content-length", "")
                        if declared.isdigit() and int(declared) > max_bytes:
                            raise UrlTooLarge(f"download of {declared} bytes exceeds the {_mib(max_bytes)} limit")
                        async for chunk in response.aiter_bytes():
                            received += len(chunk)
                            if received > max_bytes:
                                raise UrlTooLarge(f"download exceeds the {_mib(max_bytes)} limit")
                            chunks.append(chunk)
                        return b"".join(chunks)
                    finally:
                        await response.aclose()
                raise UrlFetchRefused()  # too many redirects
    except (TimeoutError, httpx.HTTPError, ValueError, UnicodeError) as exc:
        raise UrlFetchRefused() from exc


def url_refused_reason(timeout_s: float) -> str:
    """The one text for every URL that could not be fetched."""
    return (
        f"could not download it: the URL must be a public http(s) address that answers 200 within {timeout_s:g} s "
        "(loopback, private and link-local hosts are refused unless IMGTOOLS_ALLOW_PRIVATE_URLS names them)"
    )


class ImageResolver:
    """Turns one reference string into a `ResolvedImage`, or raises `ImageRefError`."""

    def __init__(
        self,
        lookup_output: Callable[[str], Path | None],
        input_roots: list[Path],
        *,
        max_bytes: int = 32 * 1024 * 1024,
        max_pixels: int = 4096 * 4096,
        url_timeout_s: float = 15.0,
        allow_urls: bool = True,
        url_policy: UrlPolicy | None = None,
    ) -> None:
        self._lookup_output = lookup_output
        # Resolve once so containment checks compare real paths with real paths.
        self.input_roots = [Path(root).expanduser().resolve() for root in input_roots]
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.url_timeout_s = url_timeout_s
        self.allow_urls = allow_urls
        self.url_policy = url_policy or UrlPolicy()

    async def resolve(self, ref: str, *, param: str, mode: ImageMode = "RGB") -> ResolvedImage:
        if not isinstance(ref, str) or not ref.strip():
            raise ImageRefError(param, repr(ref) if not isinstance(ref, str) else ref,
                                f"empty reference; expected {ACCEPTED_FORMS}")
        if mode not in ("RGB", "L"):
            raise ValueError(f"mode must be 'RGB' or 'L', not {mode!r}")
        ref = ref.strip()
        source, data, output_id = await self._load_bytes(ref, param)
        image = await anyio.to_thread.run_sync(self._decode, data, mode, ref, param)
        shown = shorten_reference(ref) if source == "data" else redacted_url(ref) if source == "url" else ref
        return ResolvedImage(image, source, shown, hashlib.sha256(data).hexdigest(), output_id)

    async def _load_bytes(self, ref: str, param: str) -> tuple[SourceKind, bytes, str | None]:
        if ref.startswith(OUTPUT_URI_PREFIX):
            output_id = ref.removeprefix(OUTPUT_URI_PREFIX)
            if not OUTPUT_ID_RE.match(output_id):
                raise ImageRefError(param, ref, "expected imgtools://images/<id> with an id like "
                                    "20261126-155012-a1b2c3d4")
            return "output", await self._read_output(output_id, ref, param), output_id
        if OUTPUT_ID_RE.match(ref):
            return "output", await self._read_output(ref, ref, param), ref
        if ref[:5].lower() == "data:":
            return "data", self._decode_data_url(ref, param), None
        scheme = _SCHEME_RE.match(ref)
        if scheme and scheme["scheme"].lower() in ("http", "https"):
            return "url", await self._fetch(ref, param), None
        if scheme and scheme["scheme"].lower() == "file":
            return "file", await self._read_file(self._file_url_path(ref, param), ref, param), None
        if scheme and len(scheme["scheme"]) > 1:
            raise ImageRefError(param, ref, f"unsupported scheme {scheme['scheme']!r}; expected {ACCEPTED_FORMS}")
        if _looks_like_base64(ref):
            return "data", self._decode_base64(ref, ref, param), None
        return "file", await self._read_file(ref, ref, param), None

    async def _read_output(self, output_id: str, ref: str, param: str) -> bytes:
        path = self._lookup_output(output_id)
        if path is None:
            raise ImageRefError(param, ref, f"unknown output id {output_id}")
        try:
            return await anyio.to_thread.run_sync(self._read_capped, Path(path), ref, param)
        except OSError as exc:
            reason = f"output {output_id} has no readable image ({exc.strerror or exc})"
            raise ImageRefError(param, ref, reason) from exc

    def _file_url_path(self, ref: str, param: str) -> str:
        parts = urlsplit(ref)
        if parts.netloc not in ("", "localhost"):
            raise ImageRefError(param, ref, f"file:// URLs must be local, not on host {parts.netloc!r}")
        return url2pathname(parts.path)

    async def _read_file(self, raw_path: str, ref: str, param: str) -> bytes:
        if not self.input_roots:
            raise ImageRefError(param, ref, "file paths are disabled (no input roots configured)")
        try:
            path = Path(raw_path).expanduser()
            if not path.is_absolute():
                path = self.input_roots[0] / path
            # resolve() follows every symlink, so a link inside a root pointing outside is caught here.
            real = path.resolve()
        except (OSError, RuntimeError, ValueError) as exc:
            raise ImageRefError(param, ref, f"not a usable file path ({exc})") from exc
        if not any(real.is_relative_to(root) for root in self.input_roots):
            roots = ", ".join(str(root) for root in self.input_roots)
            raise ImageRefError(param, ref, f"path is outside the allowed input roots ({roots})")
        try:
            is_file = real.is_file()
        except OSError:  # e.g. a name too long for the file system: not a file either
            is_file = False
        if not is_file:
            raise ImageRefError(param, ref, f"no such file under the allowed input roots; expected {ACCEPTED_FORMS}")
        try:
            return await anyio.to_thread.run_sync(self._read_capped, real, ref, param)
        except OSError as exc:
            raise ImageRefError(param, ref, f"cannot read file ({exc.strerror or exc})") from exc

    def _read_capped(self, path: Path, ref: str, param: str) -> bytes:
        with path.open("rb") as handle:
            data = handle.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise ImageRefError(param, ref, f"file is larger than the {_mib(self.max_bytes)} limit")
        return data

    def _decode_data_url(self, ref: str, param: str) -> bytes:
        match = _DATA_URL_RE.match(ref)
        if match is None:
            raise ImageRefError(param, ref, "malformed data URL; expected data:image/<type>;base64,<data>")
        mime = match["mime"].strip().lower()
        if not mime.startswith("image/"):
            raise ImageRefError(param, ref, f"data URL type {mime or '(none)'!r} is not image/*")
        if "base64" not in (p.strip().lower() for p in match["params"].split(";")):
            raise ImageRefError(param, ref, "only base64 data URLs are supported (data:image/<type>;base64,...)")
        return self._decode_base64(match["payload"], ref, param)

    def _decode_base64(self, payload: str, ref: str, param: str) -> bytes:
        compact = "".join(payload.split())
        if len(compact) * 3 // 4 > self.max_bytes:
            raise ImageRefError(param, ref, f"encoded image is larger than the {_mib(self.max_bytes)} limit")
        if "-" in compact or "_" in compact:
            compact = compact.replace("-", "+").replace("_", "/")
        # Senders often drop the padding; restore it rather than reject otherwise valid data.
        compact += "=" * (-len(compact) % 4)
        try:
            return base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImageRefError(param, ref, f"corrupt base64 ({exc})") from exc

    async def _fetch(self, url: str, param: str) -> bytes:
        shown = redacted_url(url)
        if not self.allow_urls:
            raise ImageRefError(param, shown, "http(s) URLs are disabled on this server")
        try:
            return await fetch_url(
                url,
                policy=self.url_policy,
                max_bytes=self.max_bytes,
                timeout_s=self.url_timeout_s,
                accept="image/*",
            )
        except UrlTooLarge as exc:
            raise ImageRefError(param, shown, str(exc)) from exc
        except UrlFetchRefused as exc:
            raise ImageRefError(param, shown, url_refused_reason(self.url_timeout_s)) from exc

    def _decode(self, data: bytes, mode: ImageMode, ref: str, param: str) -> Image.Image:
        Image.init()
        formats = [name for name in _DECODE_FORMATS if name in Image.OPEN]
        try:
            image = Image.open(io.BytesIO(data), formats=formats)
        except Image.DecompressionBombError as exc:
            raise ImageRefError(param, ref, f"image exceeds the {self.max_pixels} pixel limit") from exc
        except Exception as exc:  # noqa: BLE001 - untrusted bytes can make any Pillow plugin raise anything
            raise ImageRefError(param, ref, f"not a decodable image ({', '.join(formats)} accepted)") from exc
        # Check the header's size before load() allocates the pixels.
        width, height = image.size
        if width * height > self.max_pixels:
            raise ImageRefError(param, ref, f"image is {width}x{height}, over the {self.max_pixels} pixel limit")
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_mask(image) if mode == "L" else to_rgb(image)
        except Exception as exc:  # noqa: BLE001 - same reason: truncated or hostile data fails in plugin code
            raise ImageRefError(param, ref, f"corrupt image data ({exc})") from exc


def _looks_like_base64(ref: str) -> bool:
    """Bare base64 versus a relative path: both may use only [A-Za-z0-9+/]."""
    compact = "".join(ref.split())
    if not _B64_RE.match(compact) or len(compact) < 16:
        return False
    # No image fits in fewer than ~100 base64 chars, and a dot-free path that long is implausible.
    return compact.startswith(_B64_IMAGE_PREFIXES) or len(compact) >= 128


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB" if n >= 1024 * 1024 else f"{n} bytes"
