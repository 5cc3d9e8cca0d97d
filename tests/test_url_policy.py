"""http(s) image and video URLs: only public hosts unless IMGTOOLS_ALLOW_PRIVATE_URLS names them, every redirect
hop checked, the checked address is the one connected to, one error text for every failed fetch, and the URL
recorded in results without its credentials or query."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest
from mcp import Client
from openai_loopback import OpenAILoopback
from PIL import Image

from imgtools_mcp.config import Settings
from imgtools_mcp.images.refs import ImageRefError, ImageResolver, UrlPolicy, redacted_url, url_refused_reason
from imgtools_mcp.images.video_refs import resolve_video

pytestmark = pytest.mark.anyio
REFUSED = url_refused_reason(2.0)


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (5, 7), (50, 60, 70)).save(buffer, "PNG")
    return buffer.getvalue()


class LoopbackImages:
    """An image server on 127.0.0.1 that records each request's path and Host header."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                owner.seen.append((self.path, self.headers.get("Host", "")))
                path = urlsplit(self.path)
                if path.path == "/ok":
                    body = png_bytes()
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif path.path == "/to":  # /to?u=<where>: a redirect anywhere
                    self.send_response(302)
                    self.send_header("Location", parse_qs(path.query)["u"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self.send_error(404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"

    def paths(self) -> list[str]:
        return [path for path, _ in self.seen]


@pytest.fixture
def images() -> Iterator[LoopbackImages]:
    server = LoopbackImages()
    thread = threading.Thread(target=server.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        thread.join(5)


def fake_dns(table: dict[str, list[str]], calls: list[str] | None = None):
    """A resolver for names no real DNS has (tests run offline): `table[name]`, else 'no such host'."""

    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


def resolver(allowed: list[str] = (), dns: dict[str, list[str]] | None = None, calls: list[str] | None = None) -> ImageResolver:
    policy = UrlPolicy(list(allowed), resolve=fake_dns(dns, calls) if dns is not None else None)
    return ImageResolver(lambda _id: None, [], url_timeout_s=2.0, url_policy=policy)


async def refusal(resolver: ImageResolver, url: str) -> str:
    with anyio.fail_after(10):
        with pytest.raises(ImageRefError) as info:
            await resolver.resolve(url, param="image")
    assert info.value.param == "image"
    return info.value.reason


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- which hosts ---------------------------------------------------------------------------------


async def test_loopback_private_and_metadata_addresses_are_refused_by_default(images: LoopbackImages) -> None:
    public_only = resolver()
    port = images.port
    for url in (
        f"http://127.0.0.1:{port}/ok",
        f"http://localhost:{port}/ok",  # a name that resolves to loopback
        f"http://localhost.:{port}/ok",
        f"http://[::1]:{port}/ok",
        f"http://[::ffff:127.0.0.1]:{port}/ok",  # IPv4-mapped IPv6
        f"http://[::ffff:7f00:1]:{port}/ok",
        f"http://[64:ff9b::7f00:1]:{port}/ok",  # NAT64 of 127.0.0.1
        f"http://[2002:7f00:1::]:{port}/ok",  # 6to4 of 127.0.0.1
        f"http://2130706433:{port}/ok",  # 127.0.0.1 as one decimal number
        f"http://0.0.0.0:{port}/ok",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",  # CGNAT range (a metadata address too)
        "http://10.0.0.1/a.png",
        "http://172.16.5.4/a.png",
        "http://192.168.1.1/a.png",
        "http://224.0.0.1/a.png",
        "http://240.0.0.1/a.png",
        f"http://user:pw@127.0.0.1:{port}/ok",
    ):
        assert await refusal(public_only, url) == REFUSED, url
    assert images.seen == []  # nothing was ever connected to


async def test_a_name_that_resolves_to_a_private_address_is_refused() -> None:
    dns = {"images.example.com": ["127.0.0.1"], "mixed.example.com": ["93.184.215.14", "10.1.2.3"]}
    for url in ("http://images.example.com/a.png", "https://images.example.com/a.png", "http://mixed.example.com/a.png"):
        assert await refusal(resolver(dns=dns), url) == REFUSED, url


async def test_the_allow_list_names_hosts_addresses_and_networks(images: LoopbackImages) -> None:
    url = f"{images.base}/ok"
    for allowed in (["127.0.0.1"], ["127.0.0.0/8"], [" 10.0.0.0/8 ", "127.0.0.1/32"]):
        resolved = await resolver(allowed).resolve(url, param="image")
        assert resolved.source == "url" and resolved.image.size == (5, 7), allowed
    # By name: the name is allowed whatever it resolves to.
    named = resolver(["images.lan"], dns={"images.lan": ["127.0.0.1"]})
    assert (await named.resolve(f"http://images.lan:{images.port}/ok", param="image")).image.size == (5, 7)
    # Another network does not let loopback through.
    assert await refusal(resolver(["10.0.0.0/8", "192.168.0.0/16"]), url) == REFUSED


async def test_the_checked_address_is_the_one_connected_to(images: LoopbackImages) -> None:
    """No second lookup (a DNS-rebinding answer could differ): the name is resolved once per hop, the connection goes
    to that address, and the server still sees the URL's own Host."""
    calls: list[str] = []
    pinned = resolver(["127.0.0.1"], dns={"only-in-test.example": ["127.0.0.1"]}, calls=calls)
    resolved = await pinned.resolve(f"http://only-in-test.example:{images.port}/ok", param="image")
    assert resolved.image.size == (5, 7)
    assert calls == ["only-in-test.example"]
    assert images.seen == [("/ok", f"only-in-test.example:{images.port}")]


async def test_every_redirect_hop_is_checked(images: LoopbackImages) -> None:
    allowed = resolver(["127.0.0.1"], dns={"rebound.example": ["10.9.8.7"]})
    followed = await allowed.resolve(f"{images.base}/to?u=/ok", param="image")
    assert followed.image.size == (5, 7)
    for target in (
        "http://169.254.169.254/latest/meta-data/",
        f"http://[::1]:{images.port}/ok",
        f"http://rebound.example:{images.port}/ok",
        "file:///etc/passwd",
    ):
        images.seen.clear()
        assert await refusal(allowed, f"{images.base}/to?u={target}") == REFUSED, target
        assert images.paths() == [f"/to?u={target}"]  # the first hop only; the refused one was never fetched
    # A loop of redirects ends, with the same text.
    assert await refusal(allowed, f"{images.base}/to?u=/to?u=/to") == REFUSED


async def test_every_failed_fetch_reads_the_same(images: LoopbackImages) -> None:
    """Closed port, missing file, unknown name and refused host: one text, so the server scans no ports for anyone."""
    allowed = resolver(["127.0.0.1"], dns={})
    reasons = {
        await refusal(allowed, f"http://127.0.0.1:{closed_port()}/ok"),
        await refusal(allowed, f"{images.base}/missing"),
        await refusal(allowed, "http://no-such-host.invalid/a.png"),
        await refusal(allowed, "http://10.0.0.1/a.png"),
    }
    assert reasons == {REFUSED}
    assert "\n" not in REFUSED and "IMGTOOLS_ALLOW_PRIVATE_URLS" in REFUSED


async def test_video_urls_follow_the_same_policy(images: LoopbackImages) -> None:
    public_only = resolver()
    with pytest.raises(ImageRefError) as info:
        await resolve_video(f"{images.base}/ok", param="video", resolver=public_only, max_file_bytes=10**6,
                            max_download_bytes=10**6)
    assert info.value.reason == url_refused_reason(8.0)
    assert images.seen == []
    video = await resolve_video(f"{images.base}/ok?sig=secret", param="video", resolver=resolver(["127.0.0.1"]),
                                max_file_bytes=10**6, max_download_bytes=10**6)
    assert video.kind == "url" and video.size_bytes == len(png_bytes())
    assert video.reference == f"{images.base}/ok"


def test_redacted_url_drops_credentials_query_and_fragment() -> None:
    assert redacted_url("https://user:pw@example.com:8443/a/b.png?X-Amz-Signature=abc&token=t#frag") == (
        "https://example.com:8443/a/b.png"
    )
    assert redacted_url("http://[2001:db8::1]/x.png?sig=1") == "http://[2001:db8::1]/x.png"
    assert redacted_url("http://example.com/plain.png") == "http://example.com/plain.png"


# --- through the MCP client -------------------------------------------------------------------


async def test_tools_refuse_private_urls_unless_allowed(tmp_path: Path, images: LoopbackImages) -> None:
    from imgtools_mcp.server import build_server

    with OpenAILoopback() as vlm:
        base = Settings(output_dir=tmp_path / "out", device="cpu", hf_offline=True, vlm_api_key="test-key",
                        vlm_base_url=vlm.base_url)
        async with Client(build_server(base)) as client:
            refused = await client.call_tool("describe_image", {"images": [f"{images.base}/ok"]})
            video = await client.call_tool("describe_video", {"video": f"http://localhost:{images.port}/ok"})
        assert refused.is_error and video.is_error
        for result, param in ((refused, "images"), (video, "video")):
            text = result.content[0].text
            assert "\n" not in text and param in text and "could not download it" in text, text
        assert images.seen == [] and vlm.chat_requests == []

        allowed = base.model_copy(update={"allow_private_urls": ["127.0.0.1"]})
        async with Client(build_server(allowed)) as client:
            described = await client.call_tool("describe_image", {"images": [f"{images.base}/ok"]})
        assert not described.is_error, described.content
        assert images.paths() == ["/ok"] and len(vlm.chat_requests) == 1


async def test_results_sidecars_and_infotext_record_the_url_without_secrets(tmp_path: Path, tiny_sd15: Path,
                                                                           images: LoopbackImages) -> None:
    from imgtools_mcp.server import build_server

    settings = Settings(model=str(tiny_sd15), output_dir=tmp_path / "out", device="cpu", hf_offline=True,
                        allow_private_urls=["127.0.0.1"])
    url = f"http://alice:hunter2@127.0.0.1:{images.port}/ok?X-Amz-Signature=deadbeef&token=s3cret"
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("edit", {"prompt": "x", "image": url, "steps": 2, "width": 64, "height": 64})
    assert not result.is_error, result.content
    image = result.structured_content["images"][0]
    png = Image.open(image["path"])
    sidecar = Path(image["path"]).with_suffix(".json").read_text()
    recorded = [json.dumps(result.structured_content), result.content[0].text, sidecar, png.info["parameters"]]
    for text in recorded:
        for secret in ("alice", "hunter2", "X-Amz-Signature", "deadbeef", "s3cret"):
            assert secret not in text
    assert f"127.0.0.1:{images.port}/ok" in sidecar and f"127.0.0.1:{images.port}/ok" in png.info["parameters"]
