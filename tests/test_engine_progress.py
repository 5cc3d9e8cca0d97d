"""A first call's slow work reports progress: hub downloads (bytes), loading (per component), OpenVINO conversion."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest

from imgtools_mcp.config import Settings
from imgtools_mcp.engine.backends import backend_classes
from imgtools_mcp.engine.device import probe
from imgtools_mcp.engine.engine import Engine
from imgtools_mcp.engine.progress import Progress, pipeline_components, watching_download
from imgtools_mcp.engine.request import EngineRequest

pytestmark = pytest.mark.anyio

OPENVINO_MISSING = backend_classes()["openvino"].unavailable(probe("cpu"))


class Heard:
    """Collects (message, done, total) from whichever thread reports."""

    def __init__(self) -> None:
        self.items: list[tuple[str, float | None, float | None]] = []
        self.lock = threading.Lock()

    def __call__(self, message: str, done: float | None, total: float | None) -> None:
        with self.lock:
            self.items.append((message, done, total))

    def messages(self, fragment: str) -> list[tuple[str, float | None, float | None]]:
        return [item for item in self.items if fragment in item[0]]


@pytest.mark.skipif(OPENVINO_MISSING is not None, reason=f"OpenVINO: {OPENVINO_MISSING}")
async def test_first_generate_reports_loading_per_component_and_the_openvino_conversion(
    tiny_sd15: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(
        model=str(tiny_sd15), output_dir=tmp_path / "out", device="cpu", hf_offline=True, backend="openvino",
        cache_dir=tmp_path / "cache",
    )
    engine = Engine(settings)
    heard = Heard()
    job = await engine.acheck(EngineRequest(mode="txt2img", model=None, prompt="x", width=64, height=64, steps=1), heard)
    assert heard.items == []  # a local model: nothing to download
    out = await engine.generate(job, on_progress=heard)
    assert out.engine.backend == "openvino", out.engine

    loading = heard.messages(f"loading {tiny_sd15.name}")
    components = pipeline_components(tiny_sd15)
    assert {"unet", "vae", "text_encoder"} <= set(components)
    # One message before any weights are read, then one as each component is loaded, counting up to all of them.
    assert loading[0][1:] == (0.0, float(len(components)))
    per_component = [item for item in loading if item[1]]
    assert [done for _, done, _ in per_component] == [float(n) for n in range(1, len(components) + 1)]
    assert {message.split(": ")[1].split(" (")[0] for message, _, _ in per_component} == set(components)
    assert heard.messages(f"loaded {tiny_sd15.name} in ")
    converting = heard.messages("OpenVINO: converting the ")
    assert {message.split()[3] for message, _, _ in converting} == {"unet", "vae_decoder"}
    assert len(heard.messages("OpenVINO: converted the ")) == 2
    # The diffusers records used for counting are not printed.
    assert "Loaded unet as" not in capfd.readouterr().err

    # Loaded and converted: the next call has nothing slow left to report.
    again: list[tuple] = []
    await engine.generate(job, on_progress=lambda *item: again.append(item))
    assert again == []
    await engine.aclose()


def test_a_download_reports_the_bytes_as_they_arrive(tmp_path: Path) -> None:
    folder = tmp_path / "models--owner--name"
    heard = Heard()
    arrived = threading.Event()

    def report(message: str, done: float | None, total: float | None) -> None:
        heard(message, done, total)
        arrived.set()

    with watching_download(folder, "owner/name", Progress(report), poll_s=0.02):
        (folder / "blobs").mkdir(parents=True)
        (folder / "blobs" / "abc.incomplete").write_bytes(b"\0" * 300_000)
        assert arrived.wait(10)
        (folder / "blobs" / "def").write_bytes(b"\0" * 700_000)
        # The hub's snapshot links to its blobs; a link is not counted twice.
        (folder / "snapshots").mkdir()
        (folder / "snapshots" / "def").symlink_to(folder / "blobs" / "def")
    during = heard.messages("downloading owner/name: ")
    assert during and all(total is None and done and done >= 300_000 for _, done, total in during)
    assert heard.items[-1] == ("downloaded owner/name: 1.0 MiB", 1_000_000.0, 1_000_000.0)


def test_nothing_is_reported_when_nothing_arrives_and_a_failing_callback_stops_nothing(tmp_path: Path) -> None:
    heard = Heard()
    with watching_download(tmp_path, "owner/name", Progress(heard), poll_s=0.01):
        pass
    assert heard.items == []

    def broken(message: str, done: float | None, total: float | None) -> None:
        raise RuntimeError("client gone")

    Progress(broken)("still fine")  # progress is advisory: the work goes on


async def test_the_relay_carries_messages_from_any_thread_rising_and_below_the_first_step() -> None:
    from imgtools_mcp.runs.progress import ProgressRelay

    sent: list[tuple[float, float | None, str | None]] = []

    async def sink(progress: float, total: float | None, message: str | None) -> None:
        sent.append((progress, total, message))

    relay = ProgressRelay(sink)
    async with relay.running():

        def poll() -> None:  # like the download watcher: a plain thread that anyio did not start
            for mib in range(3):
                relay.on_progress(f"downloading owner/name: {mib}.0 MiB so far", float(mib), None)

        watcher = threading.Thread(target=poll)
        await anyio.to_thread.run_sync(lambda: (watcher.start(), watcher.join()))
        relay.expected_total = 2.0
        for step in (1, 2):
            await anyio.to_thread.run_sync(relay.on_step, step, 2)
    assert [message for _, _, message in sent] == [
        "downloading owner/name: 0.0 MiB so far", "downloading owner/name: 1.0 MiB so far",
        "downloading owner/name: 2.0 MiB so far", "step 1 / 2", "step 2 / 2",
    ]
    values = [progress for progress, _, _ in sent]
    assert values == sorted(set(values)) and values[3:] == [1, 2] and all(0 < value < 1 for value in values[:3])
