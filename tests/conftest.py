"""Shared fixtures: tiny real pipelines built locally, settings pointing at a temp output folder, MCP clients."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# No test may reach the HuggingFace Hub; tiny local pipelines stand in for real models.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from imgtools_mcp.config import Settings  # noqa: E402
from imgtools_mcp.testing import make_test_model  # noqa: E402


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
def backend_environment(tmp_path_factory: pytest.TempPathFactory):
    """Compiled backend models go to a throwaway folder, never the user's cache; backend-neutral tests run on torch.

    tests/test_backends.py picks its backends explicitly; `IMGTOOLS_BACKEND=openvino pytest` runs the rest on
    OpenVINO too. Set here rather than at import, so subprocess servers inherit it as well.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMGTOOLS_CACHE_DIR", str(tmp_path_factory.mktemp("backend-cache")))
        if "IMGTOOLS_BACKEND" not in os.environ:
            patch.setenv("IMGTOOLS_BACKEND", "torch")
        yield


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {family: make_test_model(root / f"tiny-{family}", family) for family in ("sd15", "sdxl")}


@pytest.fixture
def tiny_sd15(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["sd15"]


@pytest.fixture
def tiny_sdxl(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["sdxl"]


@pytest.fixture(scope="session")
def tiny_sd15_inpaint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dedicated inpainting checkpoint (9-channel UNet), like stable-diffusion-inpainting."""
    return make_test_model(tmp_path_factory.mktemp("models") / "tiny-sd15-inpaint", "sd15-inpaint")


@pytest.fixture
def settings(tmp_path: Path, tiny_sd15: Path) -> Settings:
    return Settings(model=str(tiny_sd15), output_dir=tmp_path / "out", device="cpu", hf_offline=True)


@pytest.fixture(params=["sd15", "sdxl"])
def family_settings(request: pytest.FixtureRequest, tmp_path: Path, tiny_models: dict[str, Path]) -> Settings:
    """The same test against both families."""
    return Settings(model=str(tiny_models[request.param]), output_dir=tmp_path / "out", device="cpu", hf_offline=True)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[object]:
    from mcp import Client

    from imgtools_mcp.server import build_server

    async with Client(build_server(settings)) as connected:
        yield connected
