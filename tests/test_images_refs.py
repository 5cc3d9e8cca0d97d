"""ImageResolver: every reference form, the path sandbox, and size/time limits on URLs."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import pytest
from PIL import Image

from imgtools_mcp.images.refs import ImageRefError, ImageResolver, ResolvedImage, UrlPolicy

OUTPUT_ID = "20261126-155012-a1b2c3d4"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def png_bytes(size: tuple[int, int] = (16, 12), color=(200, 30, 40), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    root, outside, outputs = tmp_path / "root", tmp_path / "outside", tmp_path / "outputs"
    for folder in (root, outside, outputs):
        folder.mkdir()
    (root / "cat.png").write_bytes(png_bytes())
    (root / "sub").mkdir()
    (root / "sub" / "dog.png").write_bytes(png_bytes(color=(1, 2, 3)))
    (outside / "secret.png").write_bytes(png_bytes())
    (outputs / f"{OUTPUT_ID}.png").write_bytes(png_bytes(size=(8, 8)))
    return {"root": root, "outside": outside, "outputs": outputs}


@pytest.fixture
def resolver(dirs: dict[str, Path]) -> ImageResolver:
    def lookup(output_id: str) -> Path | None:
        path = dirs["outputs"] / f"{output_id}.png"
        return path if path.exists() else None

    # The URL tests fetch from a loopback server, which only an allow-list entry lets through.
    return ImageResolver(lookup, [dirs["root"]], max_bytes=64 * 1024, url_timeout_s=0.5,
                         url_policy=UrlPolicy(["127.0.0.1"]))


# --- reference forms -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_output_id_and_uri(resolver: ImageResolver) -> None:
    for ref in (OUTPUT_ID, f"imgtools://images/{OUTPUT_ID}"):
        resolved = await resolver.resolve(ref, param="image")
        assert resolved.source == "output" and resolved.output_id == OUTPUT_ID
        assert resolved.image.size == (8, 8) and resolved.image.mode == "RGB"


@pytest.mark.anyio
async def test_unknown_output_id_is_named(resolver: ImageResolver) -> None:
    with pytest.raises(ImageRefError, match="unknown output id 20991231-000000-deadbeef") as info:
        await resolver.resolve("imgtools://images/20991231-000000-deadbeef", param="image")
    assert info.value.param == "image"
    with pytest.raises(ImageRefError, match="imgtools://images/<id>"):
        await resolver.resolve("imgtools://images/not-an-id", param="image")


@pytest.mark.anyio
async def test_file_paths_relative_absolute_and_file_url(resolver: ImageResolver, dirs) -> None:
    root = dirs["root"]
    for ref in ("cat.png", str(root / "cat.png"), "sub/dog.png", (root / "sub" / "dog.png").as_uri()):
        resolved = await resolver.resolve(ref, param="image")
        assert resolved.source == "file" and resolved.reference == ref
    assert resolved.image.getpixel((0, 0)) == (1, 2, 3)
    assert resolved.sha256 == hashlib.sha256((root / "sub" / "dog.png").read_bytes()).hexdigest()


@pytest.mark.anyio
async def test_tilde_is_expanded(dirs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(dirs["root"].parent))
    resolver = ImageResolver(lambda _id: None, [dirs["root"]])
    resolved = await resolver.resolve("~/root/cat.png", param="image")
    assert resolved.source == "file"


@pytest.mark.anyio
async def test_paths_outside_roots_are_refused(resolver: ImageResolver, dirs) -> None:
    root, outside = dirs["root"], dirs["outside"]
    (root / "escape.png").symlink_to(outside / "secret.png")
    (root / "escape_dir").symlink_to(outside, target_is_directory=True)
    refs = [
        str(outside / "secret.png"),
        "../outside/secret.png",
        "sub/../../outside/secret.png",
        "escape.png",
        "escape_dir/secret.png",
        (outside / "secret.png").as_uri(),
    ]
    for ref in refs:
        with pytest.raises(ImageRefError, match="outside the allowed input roots"):
            await resolver.resolve(ref, param="image")


@pytest.mark.anyio
async def test_symlink_within_root_is_fine(resolver: ImageResolver, dirs) -> None:
    (dirs["root"] / "alias.png").symlink_to(dirs["root"] / "cat.png")
    assert (await resolver.resolve("alias.png", param="image")).source == "file"


@pytest.mark.anyio
async def test_missing_file_and_directory(resolver: ImageResolver) -> None:
    with pytest.raises(ImageRefError, match="no such file"):
        await resolver.resolve("nope.png", param="image")
    with pytest.raises(ImageRefError, match="no such file"):
        await resolver.resolve("sub", param="image")


@pytest.mark.anyio
async def test_data_url_and_bare_base64(resolver: ImageResolver) -> None:
    data = png_bytes(color=(9, 8, 7))
    encoded = base64.b64encode(data).decode()
    wrapped = f"  {encoded[:40]}\n{encoded[40:]} "
    for ref in (f"data:image/png;base64,{encoded}", f"DATA:image/PNG;BASE64,{encoded}", encoded,
                encoded.rstrip("="), wrapped):
        resolved = await resolver.resolve(ref, param="image")
        assert resolved.source == "data" and resolved.image.getpixel((0, 0)) == (9, 8, 7)
        assert resolved.sha256 == hashlib.sha256(data).hexdigest()
        assert len(resolved.reference) <= 80


@pytest.mark.anyio
async def test_corrupt_base64_and_non_image_bytes(resolver: ImageResolver) -> None:
    encoded = base64.b64encode(png_bytes()).decode()
    with pytest.raises(ImageRefError, match="corrupt base64"):
        await resolver.resolve("data:image/png;base64,@@not base64@@", param="image")
    with pytest.raises(ImageRefError, match="corrupt base64"):
        await resolver.resolve(encoded[:81], param="mask")  # a length of 4n+1 cannot be base64
    text = base64.b64encode(b"hello, this is certainly not an image " * 4).decode()
    with pytest.raises(ImageRefError, match="not a decodable image") as info:
        await resolver.resolve(f"data:image/png;base64,{text}", param="mask")
    assert str(info.value).startswith("`mask`:") and "\n" not in str(info.value)
    with pytest.raises(ImageRefError, match="not image"):
        await resolver.resolve(f"data:text/plain;base64,{encoded}", param="image")
    noisy = io.BytesIO()
    Image.effect_noise((64, 64), 50).save(noisy, "PNG")
    truncated = base64.b64encode(noisy.getvalue()[:2000]).decode()
    with pytest.raises(ImageRefError, match="corrupt image data"):
        await resolver.resolve(truncated, param="image")


@pytest.mark.anyio
async def test_garbage_lists_accepted_forms(resolver: ImageResolver) -> None:
    for ref in ("", "   ", "ftp://example.com/a.png", "javascript:alert(1)"):
        with pytest.raises(ImageRefError, match="output id") as info:
            await resolver.resolve(ref, param="image")
        assert "`image`" in str(info.value)


@pytest.mark.anyio
async def test_error_truncates_long_reference(resolver: ImageResolver) -> None:
    with pytest.raises(ImageRefError) as info:
        await resolver.resolve("x" * 5000 + ".png", param="image")
    assert len(info.value.reference) <= 80 and len(str(info.value)) < 300


@pytest.mark.anyio
async def test_pixel_limit_and_byte_limit(dirs) -> None:
    (dirs["root"] / "big.png").write_bytes(png_bytes(size=(300, 300)))
    resolver = ImageResolver(lambda _id: None, [dirs["root"]], max_pixels=200 * 200)
    with pytest.raises(ImageRefError, match="300x300, over the 40000 pixel limit"):
        await resolver.resolve("big.png", param="image")
    resolver = ImageResolver(lambda _id: None, [dirs["root"]], max_bytes=100)
    with pytest.raises(ImageRefError, match="larger than the 100 bytes limit"):
        await resolver.resolve("big.png", param="image")


@pytest.mark.anyio
async def test_rgba_on_white_mask_as_l_and_exif_rotation(dirs, resolver: ImageResolver) -> None:
    (dirs["root"] / "clear.png").write_bytes(png_bytes(color=(0, 0, 0, 0), mode="RGBA"))
    assert (await resolver.resolve("clear.png", param="image")).image.getpixel((0, 0)) == (255, 255, 255)
    mask = (await resolver.resolve("clear.png", param="mask", mode="L")).image
    assert mask.mode == "L" and mask.getpixel((0, 0)) == 0

    rotated = Image.new("RGB", (20, 10), (0, 0, 255))
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rotated.save(dirs["root"] / "rot.jpg", exif=exif)
    assert (await resolver.resolve("rot.jpg", param="image")).image.size == (10, 20)


@pytest.mark.anyio
async def test_no_roots_disables_paths() -> None:
    resolver = ImageResolver(lambda _id: None, [])
    with pytest.raises(ImageRefError, match="file paths are disabled"):
        await resolver.resolve("/etc/hosts", param="image")


# --- URLs against a real loopback server ---------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    release: threading.Event  # set by the fixture on teardown so a stalled handler ends
    image = png_bytes(size=(5, 7), color=(50, 60, 70))

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        try:
            route = getattr(self, "route_" + self.path.strip("/").replace("-", "_"), None)
            if route is None:
                self.send_error(404)
                return
            route()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, which is what the size and timeout tests expect

    def route_ok(self) -> None:
        self._headers(len(self.image))
        self.wfile.write(self.image)

    def route_redirect(self) -> None:
        self.send_response(302)
        self.send_header("Location", "/ok")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def route_declared_huge(self) -> None:
        self._headers(10 * 1024 * 1024)
        self.wfile.write(b"\0" * 1024)

    def route_undeclared_huge(self) -> None:
        # HTTP/1.0 without Content-Length: the body runs until the connection closes.
        self._headers(None)
        for _ in range(1024):
            self.wfile.write(b"\0" * 1024)

    def route_stall(self) -> None:
        self._headers(None)
        self.wfile.write(b"\x89PNG")
        self.wfile.flush()
        self.release.wait(10)

    def _headers(self, length: int | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()


@pytest.fixture
def server() -> Iterator[str]:
    release = threading.Event()
    handler = type("Handler", (_Handler,), {"release": release})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    # A short poll interval only makes shutdown() prompt; nothing waits on it.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.mark.anyio
async def test_url_ok_and_redirect(resolver: ImageResolver, server: str) -> None:
    for path in ("/ok", "/redirect"):
        resolved: ResolvedImage = await resolver.resolve(server + path, param="image")
        assert resolved.source == "url" and resolved.image.size == (5, 7)
        assert resolved.image.getpixel((0, 0)) == (50, 60, 70)


@pytest.mark.anyio
async def test_url_size_limits(resolver: ImageResolver, server: str) -> None:
    with pytest.raises(ImageRefError, match="10485760 bytes exceeds"):
        await resolver.resolve(server + "/declared-huge", param="image")
    with pytest.raises(ImageRefError, match="download exceeds the 64 KiB|download exceeds"):
        await resolver.resolve(server + "/undeclared-huge", param="image")


@pytest.mark.anyio
async def test_url_timeout_and_http_error(resolver: ImageResolver, server: str) -> None:
    # A stalled download and a 404 read the same (one text for every failed fetch), naming the time limit.
    with anyio.fail_after(5):  # the resolver's own 0.5 s limit must fire well before this
        with pytest.raises(ImageRefError, match="could not download it.*within 0.5 s"):
            await resolver.resolve(server + "/stall", param="image")
    with pytest.raises(ImageRefError, match="could not download it.*within 0.5 s"):
        await resolver.resolve(server + "/missing", param="image")


@pytest.mark.anyio
async def test_urls_can_be_disabled(dirs, server: str) -> None:
    resolver = ImageResolver(lambda _id: None, [dirs["root"]], allow_urls=False)
    with pytest.raises(ImageRefError, match="disabled"):
        await resolver.resolve(server + "/ok", param="image")
