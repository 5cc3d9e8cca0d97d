"""The output folder: full PNGs with infotext, JSON sidecars, and ids that survive restarts."""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

ID_PATTERN = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{8}$")
URI_PREFIX = "imgtools://images/"


class StoreError(Exception):
    """Writing to or reading from the output folder failed; the message says what and where."""


@dataclass(frozen=True)
class StoredImage:
    id: str
    path: Path
    width: int
    height: int

    @property
    def uri(self) -> str:
        return URI_PREFIX + self.id

    @property
    def metadata_uri(self) -> str:
        return f"{URI_PREFIX}{self.id}/metadata"


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class OutputStore:
    """Images are `<id>.png` + `<id>.json` in one folder; the id is the only key, so restarts lose nothing."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)

    def new_id(self) -> str:
        return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"

    def png_path(self, image_id: str) -> Path:
        return self.root / f"{image_id}.png"

    def sidecar_path(self, image_id: str) -> Path:
        return self.root / f"{image_id}.json"

    def lookup(self, image_id: str) -> Path | None:
        """The PNG of an output id, or None when the id is malformed or unknown."""
        image_id = image_id.removeprefix(URI_PREFIX)
        if not ID_PATTERN.match(image_id):
            return None
        path = self.png_path(image_id)
        return path if path.is_file() else None

    def save(self, image: Image.Image, infotext: str, metadata: dict[str, Any]) -> StoredImage:
        image_id = self.new_id()
        png = PngInfo()
        png.add_text("parameters", infotext)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=png, compress_level=4)
        sidecar = {"id": image_id, "uri": URI_PREFIX + image_id, "created": datetime.now(timezone.utc).isoformat(),
                   "width": image.width, "height": image.height, "infotext": infotext, **metadata}
        try:
            # PNG first: a sidecar never points at an image that is not there.
            atomic_write(self.png_path(image_id), buffer.getvalue())
        except OSError as exc:
            raise StoreError(f"could not write image {image_id} to the output folder (IMGTOOLS_OUTPUT_DIR): {exc.strerror or exc}") from exc
        try:
            atomic_write(self.sidecar_path(image_id), json.dumps(sidecar, indent=2, default=str).encode())
        except OSError as exc:
            # An image without its sidecar would be an id nobody was told about; take the PNG back out.
            self.png_path(image_id).unlink(missing_ok=True)
            raise StoreError(f"could not write image {image_id} to the output folder (IMGTOOLS_OUTPUT_DIR): {exc.strerror or exc}") from exc
        return StoredImage(image_id, self.png_path(image_id), image.width, image.height)

    def read_png(self, image_id: str) -> bytes:
        path = self.lookup(image_id)
        if path is None:
            raise KeyError(image_id)
        return path.read_bytes()

    def read_metadata(self, image_id: str) -> dict[str, Any]:
        if self.lookup(image_id) is None:
            raise KeyError(image_id)
        return json.loads(self.sidecar_path(image_id.removeprefix(URI_PREFIX)).read_text())
