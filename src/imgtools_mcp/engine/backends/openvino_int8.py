"""int8 activations for the OpenVINO UNet (`nncf_w8a8`): calibrated on a real request, used where its drift is small.

Why and how:
- On a CPU whose bf16 UNet step already runs near the bf16 matmul roofline, the next factor is int8: VNNI and
  AMX-INT8 take int8 dot products at twice the bf16 rate, but only when activations are int8 too. int8 weights
  alone (`nncf_int8`) are dequantized every step and run slower than bf16 (benchmarks/int8_cpu.py).
- int8 activations need calibration: `nncf.quantize` measures each layer's input range on real inputs. They come
  from the model's own first requests: the bf16 IR serves them and their UNet inputs (every step, as the
  scheduler and the prompts made them) are kept, at most MAX_KEPT, spread over the steps.
- Then, in a child process at low CPU priority (nncf holds every layer's activations: GBs for SD 1.5 at 512²,
  given back when the child exits), while the server keeps serving with bf16: the UNet as the server holds it
  (saved once to a work folder) is loaded in fp32 (nncf calibrates float32 graphs; it cannot quantize the bf16
  IR), converted and quantized on all but one of the kept inputs. Its drift is measured from the one held out:
  DRIFT_STEPS denoising steps with the model's own scheduler from one seeded noise, the held-out prompts and CFG,
  once through the bf16 IR and once through the int8 one, and the PSNR of the final latents. (One step's noise
  prediction is a poor proxy: on the real-size SD 1.5 UNet it measured 26.5 dB in one run and 48.8 dB in
  another, depending on how far the held-out step was from the calibrated ones, while what matters is where the
  denoise ends: 39.4 dB in latents, 35.9 dB in pixels after 10 steps in the second; benchmarks/int8_cpu.py.)
  The int8 IR is written beside the bf16 one, keyed from it (model files, dtype, software versions), with the
  drift in its meta.json.
- The VAE decoder is quantized in the same child when OpenVINO serves it (the largest part of a CPU generate after
  the UNet steps: 6.4 s bf16 against 4.0 s int8 for SD 1.5 at 512², benchmarks/vae_int8.py). Its calibration
  inputs are the clean latents the bf16 UNet predicts from the kept calibration inputs (steps past the noisiest,
  where that prediction is a picture's latents), cropped to DECODER_CROP; its drift is the pixel PSNR of the int8
  UNet's own drift run decoded through both decoders. It is used with the int8 UNet where that drift is at least
  MIN_DECODER_PSNR_DB (or always when asked for by name); a decoder that fails to quantize leaves it in bf16.
- Later requests use it when the drift is at least MIN_PSNR_DB (`IMGTOOLS_QUANTIZE=auto`), or always when
  `nncf_w8a8` is asked for by name (the drift is still reported); otherwise bf16 stays, with the measured drift
  as the reason. A restart reads the IR and its drift from disk, so a model is calibrated once.
"""

from __future__ import annotations

import atexit
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..choice import Choice
from ..quantize import normalize_setting

if TYPE_CHECKING:
    from ..device import DeviceFacts

log = logging.getLogger(__name__)

METHOD = "nncf_w8a8"
# CPU instructions that take int8 dot products faster than bf16 ones; without them int8 activations only add work.
INT8_DOT_FLAGS = frozenset({"amx_int8", "avx512_vnni", "avx_vnni"})
# The least PSNR of the final latents after DRIFT_STEPS steps, int8 against bf16 from the same noise, for auto to use
# int8. Measured with random weights (which only bound a trained model's drift): 39.4 and 42.6 dB after 10 DDIM steps
# on the real-size SD 1.5 UNet at 512² in two runs (35.9 and 39.2 dB in pixels), ~40 dB on the tiny test UNets.
MIN_PSNR_DB = 35.0
DRIFT_STEPS = 8
DRIFT_GUIDANCE = 7.5
# UNet inputs kept before calibrating: one held out for the drift, the rest calibrate (nncf's ranges come from them).
# A 25-step request gives plenty; a few-step model (sd-turbo) adds up over its first requests.
MIN_CAPTURED = 5
# Inputs kept while calibrating: past this every other one is dropped, which keeps them spread over the steps and
# never leaves fewer than MIN_CAPTURED once that many were kept (2 * MIN_CAPTURED - 1 + 1 halves to MIN_CAPTURED).
MAX_KEPT = 2 * MIN_CAPTURED
# The least pixel PSNR of the drift run's image through the int8 decoder against the bf16 decoder, for auto to use it:
# 39.5 dB with random weights on SD 1.5's decoder at 512² (benchmarks/vae_int8.py), as the UNet's 36-37 dB.
MIN_DECODER_PSNR_DB = 35.0
# Clean-latent predictions only from steps where the noise is at most this share of the signal (alphas_cumprod at
# least MIN_SIGNAL): at the noisiest steps the prediction divides by a tiny signal and is no picture's latents.
MIN_SIGNAL = 0.1
# The key a kept UNet input carries its request's classifier-free guidance under (not a UNet input): whether its
# batch is [unconditional, conditional] halves. Two images without guidance are an even batch too.
GUIDED = "@guided"
DECODER_CROP = 32  # calibration latents are cropped to this (256² pixels for SD): the ranges, at a quarter the cost
CHILD_TIMEOUT_S = 3 * 3600
# The child's peak memory per byte of the fp32 UNet: nncf.quantize peaked at 12.5 GB for SD 1.5 (3.4 GB in fp32) at
# 512², so SDXL (10 GB) does not calibrate on a 24 GB machine under auto.
CHILD_MEMORY_PER_FP32_BYTE = 4.0


def choose(setting: str, facts: "DeviceFacts", installed: Iterable[str]) -> Choice[bool]:
    """Whether OpenVINO UNets get int8 activations here, and why."""
    name = normalize_setting(setting)
    if name == METHOD:
        return Choice(True, f"IMGTOOLS_QUANTIZE={METHOD}")
    if name != "auto":
        return Choice(False, f"IMGTOOLS_QUANTIZE={name}")
    if "nncf" not in set(installed):
        return Choice(False, "int8 activations need the nncf package (the openvino extra)")
    flags = sorted(facts.cpu_features & INT8_DOT_FLAGS)
    if not flags:
        return Choice(False, f"{facts.name} has no int8 dot-product instructions (VNNI, AMX): int8 would not be faster")
    return Choice(
        True,
        f"{facts.name} has {', '.join(flags)} (int8 dot products at twice the bf16 rate): the OpenVINO UNet is "
        f"calibrated on its first requests and switches to int8 activations where {DRIFT_STEPS} steps end at least "
        f"{MIN_PSNR_DB:g} dB PSNR from bf16 (its VAE decoder too, where the image through it ends at least "
        f"{MIN_DECODER_PSNR_DB:g} dB from bf16's)",
    )


def decide(drift_db: float, *, explicit: bool) -> Choice[bool]:
    """Whether a calibrated int8 UNet replaces bf16, from its measured drift."""
    measured = f"{DRIFT_STEPS} steps from the same noise ended {drift_db:.1f} dB PSNR from bf16"
    return _decided(drift_db, MIN_PSNR_DB, measured, "the UNet", explicit=explicit)


def decide_decoder(drift_db: float, *, explicit: bool) -> Choice[bool]:
    """Whether the calibrated int8 VAE decoder replaces bf16 beside the int8 UNet, from its measured drift."""
    measured = f"the drift run's image through it ended {drift_db:.1f} dB pixel PSNR from the bf16 decoder's"
    return _decided(drift_db, MIN_DECODER_PSNR_DB, measured, "the VAE decoder", explicit=explicit)


def _decided(drift_db: float, least_db: float, measured: str, part: str, *, explicit: bool) -> Choice[bool]:
    if explicit:
        return Choice(True, f"IMGTOOLS_QUANTIZE={METHOD}; {measured}")
    if drift_db >= least_db:
        return Choice(True, f"auto: {measured} (at least {least_db:g} dB)")
    return Choice(False, f"auto: {measured}, below {least_db:g} dB; {part} stays in bf16")


def child_memory_bytes(unet_parameters: int) -> int:
    return int(unet_parameters * 4 * CHILD_MEMORY_PER_FP32_BYTE)


@dataclass
class Int8Activations:
    """One model's int8-activation UNet: calibrating -> quantizing -> ready | declined | failed."""

    explicit: bool  # asked for by name: used whatever its drift
    folder: Path  # where its IR is (or will be) written
    state: str = "calibrating"
    reason: str = "calibrating: the bf16 UNet's inputs of this request are kept for int8 calibration"
    captured: list[dict[str, np.ndarray]] = field(default_factory=list)
    drift_psnr_db: float | None = None
    part: Any = None  # CompiledPart of the int8 IR once ready
    bytes_before: int = 0  # the bf16 IR's weights
    bytes_after: int = 0  # the int8 IR's weights
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The VAE decoder's int8 IR (written by the same child, where OpenVINO serves the decoder): none | ready | declined.
    decoder_folder: Path | None = None
    decoder_state: str = "none"
    decoder_reason: str = ""
    decoder_drift_psnr_db: float | None = None
    decoder_part: Any = None  # CompiledPart of the int8 decoder once used
    decoder_bytes: int = 0

    def keep(self, feeds: dict[str, np.ndarray], *, guided: bool) -> None:
        """Keep one UNet call's inputs and whether its request used CFG; past MAX_KEPT every other one is dropped, so
        they stay spread over the steps."""
        kept = {name: np.array(array, copy=True) for name, array in feeds.items()}
        kept[GUIDED] = np.asarray(guided)
        self.captured.append(kept)
        if len(self.captured) > MAX_KEPT:
            self.captured = self.captured[::2]

    def as_dict(self) -> dict[str, Any]:
        """The result's and engine_status's `quantization` entry while this governs the model's UNet."""
        ready = self.state == "ready"
        info: dict[str, Any] = {
            "method": METHOD if ready else "none",
            "reason": self.reason,
            "int8_activations": self.state,
        }
        if ready:
            components = ["unet", "vae_decoder"] if self.decoder_state == "ready" else ["unet"]
            info.update(components=components, bytes_before=self.bytes_before, bytes_after=self.bytes_after)
        if self.drift_psnr_db is not None:
            info["drift_psnr_db"] = round(self.drift_psnr_db, 2)
        if self.decoder_reason:
            decoder: dict[str, Any] = {"state": self.decoder_state, "reason": self.decoder_reason}
            if self.decoder_drift_psnr_db is not None:
                decoder["drift_psnr_db"] = round(self.decoder_drift_psnr_db, 2)
            info["vae_decoder"] = decoder
        return info

    def finished(self) -> None:
        """Read the written IR's meta and decide whether it is used."""
        meta, self.drift_psnr_db, self.bytes_after = _written_ir(self.folder)
        chosen = decide(self.drift_psnr_db, explicit=self.explicit)
        self.state = "ready" if chosen.value else "declined"
        self.reason = chosen.reason
        self._decoder_finished(meta)

    def _decoder_finished(self, unet_meta: dict[str, Any]) -> None:
        if self.decoder_folder is None:
            return
        if not (self.decoder_folder / "model.xml").is_file():
            why = unet_meta.get("decoder_error") or "it was not calibrated with this UNet"
            self.decoder_state, self.decoder_reason = "none", f"the VAE decoder stays in bf16: {why}"
            return
        _, self.decoder_drift_psnr_db, self.decoder_bytes = _written_ir(self.decoder_folder)
        chosen = decide_decoder(self.decoder_drift_psnr_db, explicit=self.explicit)
        self.decoder_state = "ready" if chosen.value else "declined"
        self.decoder_reason = chosen.reason

    def fail(self, why: str) -> None:
        self.state, self.reason = "failed", f"int8 calibration failed ({why}); the UNet stays in bf16"
        log.warning("OpenVINO int8 activations: %s", why)


def _written_ir(folder: Path) -> tuple[dict[str, Any], float, int]:
    """An int8 IR the child wrote: its meta, its measured drift, its weights' bytes."""
    meta = json.loads((folder / "meta.json").read_text())
    return meta, float(meta["drift_psnr_db"]), sum(f.stat().st_size for f in folder.glob("*.bin"))


def split_captured(captured: list[dict[str, np.ndarray]]) -> tuple[list[dict], list[dict]]:
    """(calibration inputs, held-out inputs): the middle step is held out, the rest spread over the steps calibrate."""
    held = len(captured) // 2
    return [c for i, c in enumerate(captured) if i != held], [captured[held]]


def start(int8: Int8Activations, unet: Any, *, sdxl: bool, bf16_ir: Path, precision: str, free_memory: int,
          scheduler: dict[str, Any], vae: Any = None, decoder_ir: Path | None = None) -> None:
    """After a request that kept enough inputs: save the UNet (and the VAE, with `decoder_ir` the bf16 decoder's IR
    that OpenVINO serves) and start the child that quantizes them (in a thread)."""
    parameters = sum(p.numel() for p in unet.parameters())
    need = child_memory_bytes(parameters)
    if not int8.explicit and need > free_memory:
        int8.state = "declined"
        int8.reason = (f"auto: int8 calibration needs ~{need / 2**30:.1f} GiB free (nncf holds every layer's "
                       f"activations), {free_memory / 2**30:.1f} GiB are; the UNet stays in bf16")  # fmt: skip
        return
    if getattr(unet, "peft_config", None):
        int8.state = "declined"
        int8.reason = "LoRA adapters are loaded into the UNet, so its weights are not the model's own; the UNet stays in bf16"
        return
    work = int8.folder.with_name(f"{int8.folder.name}.work-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    unet.save_pretrained(work / "unet", safe_serialization=True)
    decoder = vae is not None and decoder_ir is not None and int8.decoder_folder is not None
    if decoder:
        vae.save_pretrained(work / "vae", safe_serialization=True)
    calibration, held_out = split_captured(int8.captured)
    np.savez(work / "inputs.npz", **{f"{kind}/{i}/{name}": array
                                     for kind, feeds in (("calibration", calibration), ("held_out", held_out))
                                     for i, inputs in enumerate(feeds) for name, array in inputs.items()})  # fmt: skip
    job = {"sdxl": sdxl, "bf16_ir": str(bf16_ir / "model.xml"), "out": str(int8.folder), "precision": precision,
           "scheduler": scheduler}  # fmt: skip
    if decoder:
        job.update(decoder_ir=str(Path(decoder_ir) / "model.xml"), decoder_out=str(int8.decoder_folder))
    (work / "job.json").write_text(json.dumps(job, default=str))
    int8.captured = []
    int8.state = "quantizing"
    int8.reason = (f"quantizing: calibrating int8 activations on {len(calibration)} of this model's UNet inputs in a "
                   "background process (minutes for SD 1.5 on 2 cores); requests run in bf16 until it is done")  # fmt: skip
    log.info("OpenVINO int8: UNet saved for calibration in %.1f s; quantizing in the background", time.perf_counter() - started)
    threading.Thread(target=_run_child, args=(int8, work), name="openvino-int8-calibration", daemon=True).start()


# Calibration children still running, stopped when the server exits (a half-done calibration is redone next time).
_children: dict[subprocess.Popen, Path] = {}
_children_lock = threading.Lock()


@atexit.register
def stop_children() -> None:
    with _children_lock:
        running = list(_children.items())
    for child, work in running:
        child.kill()
        child.wait()
        shutil.rmtree(work, ignore_errors=True)


def _run_child(int8: Int8Activations, work: Path) -> None:
    command = [sys.executable, "-m", "imgtools_mcp.engine.backends.openvino_int8", str(work)]
    child = None
    try:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with _children_lock:
            _children[child] = work
        _, stderr = child.communicate(timeout=CHILD_TIMEOUT_S)
        with int8.lock:
            if child.returncode != 0:
                lines = [line for line in stderr.strip().splitlines() if line.strip()]
                int8.fail(f"exit {child.returncode}: {lines[-1][:200] if lines else 'no message'}")
            else:
                int8.finished()
                log.info("OpenVINO int8 activations: %s", int8.reason)
    except Exception as exc:  # a killed or timed-out child leaves bf16 serving; the reason says what happened
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        with int8.lock:
            int8.fail(f"{type(exc).__name__}: {exc}")
    finally:
        if child is not None:
            with _children_lock:
                _children.pop(child, None)
        shutil.rmtree(work, ignore_errors=True)


# ----- the child process -----

def unet_inputs(kept: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
    """(the UNet's inputs, whether the batch is CFG's [unconditional, conditional] halves) of one kept call."""
    feeds = {name: array for name, array in kept.items() if name != GUIDED}
    return feeds, bool(kept[GUIDED])


def denoised(unet: Any, inputs: dict[str, np.ndarray], scheduler: dict[str, Any], *, guided: bool,
             steps: int = DRIFT_STEPS) -> np.ndarray:
    """The latents after `steps` steps of `scheduler` through `unet` (a compiled OpenVINO model), from seeded noise
    with the held-out call's text inputs; `guided`: the batch is [unconditional, conditional] halves, run as CFG."""
    import diffusers
    import torch

    sched = getattr(diffusers, scheduler["class"]).from_config(scheduler["config"])
    sched.set_timesteps(steps)
    batch = inputs["sample"].shape[0]
    shape = (batch // 2 if guided else batch, *inputs["sample"].shape[1:])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * sched.init_noise_sigma
    for t in sched.timesteps:
        model_input = sched.scale_model_input(torch.cat([x, x]) if guided else x, t)
        feeds = {**inputs, "sample": model_input.numpy().astype(np.float32), "timestep": np.asarray([float(t)], np.float32)}
        out = torch.from_numpy(np.array(unet(feeds)[0], copy=True))
        if guided:
            uncond, cond = out.chunk(2)
            out = uncond + DRIFT_GUIDANCE * (cond - uncond)
        x = sched.step(out, t, x).prev_sample
    return x.numpy()


def clean_latents(feeds: dict[str, np.ndarray], prediction: np.ndarray, alphas_cumprod: np.ndarray,
                  prediction_type: str, *, guided: bool) -> np.ndarray | None:
    """The clean latents a UNet call predicts (the picture its step aims at), from its inputs and output; None at a
    step too noisy for that prediction to be a picture's (signal share below MIN_SIGNAL).

    Every SD scheduler feeds the UNet the variance-preserving sample sqrt(a) x0 + sqrt(1 - a) noise (Euler's
    scale_model_input makes it so), with a = alphas_cumprod at the timestep; `guided`: the batch is CFG's halves."""
    t = int(round(float(np.asarray(feeds["timestep"]).reshape(-1)[0])))
    a = float(alphas_cumprod[min(max(t, 0), len(alphas_cumprod) - 1)])
    if a < MIN_SIGNAL:
        return None
    sample, out = feeds["sample"].astype(np.float64), prediction.astype(np.float64)
    if guided:
        half = sample.shape[0] // 2
        sample, (uncond, cond) = sample[:half], (out[:half], out[half:])
        out = uncond + DRIFT_GUIDANCE * (cond - uncond)
    if prediction_type == "v_prediction":
        clean = np.sqrt(a) * sample - np.sqrt(1 - a) * out
    elif prediction_type == "sample":
        clean = out
    else:
        clean = (sample - np.sqrt(1 - a) * out) / np.sqrt(a)
    return clean.astype(np.float32)


def crop(latents: np.ndarray, size: int = DECODER_CROP) -> np.ndarray:
    """The centre `size` x `size` of latents (all of them when smaller)."""
    h, w = latents.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return np.ascontiguousarray(latents[..., top : top + size, left : left + size])


def decoded_pixels(decoded: Any) -> np.ndarray:
    """A VAE decoder's output ([-1, 1]) as the image's pixels in [0, 1], the way the pipelines post-process it."""
    return np.clip(np.asarray(decoded, dtype=np.float64) / 2 + 0.5, 0, 1)


def psnr_db(output: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB with the reference's own range as the peak (noise predictions are not in [0, 1])."""
    output, reference = output.astype(np.float64), reference.astype(np.float64)
    mse = float(((output - reference) ** 2).mean())
    peak = float(reference.max() - reference.min())
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))


def quantize_decoder(work: Path, job: dict[str, Any], core: Any, reference: Any,
                     calibration: list[tuple[dict[str, np.ndarray], bool]], int8_latents: np.ndarray) -> dict[str, Any]:
    """Quantize the saved VAE's decoder on the clean latents the bf16 UNet predicts from the calibration inputs
    ((feeds, guided) pairs),
    measure its pixel drift on `int8_latents` (the int8 UNet's drift run), write its IR to job["decoder_out"]."""
    import diffusers
    import torch

    from .openvino_backend import compile_options, convert_module, save_ir, traceable_decoder

    started = time.perf_counter()
    vae = diffusers.AutoencoderKL.from_pretrained(work / "vae", torch_dtype=torch.float32).eval()
    sched = getattr(diffusers, job["scheduler"]["class"]).from_config(job["scheduler"]["config"])
    alphas = np.asarray(sched.alphas_cumprod, dtype=np.float64)
    prediction_type = sched.config.get("prediction_type", "epsilon")
    scale = float(vae.config.scaling_factor)

    def decoder_input(latents: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():  # what the engine's decoder part is given: after post_quant_conv
            z = torch.from_numpy(latents) / scale
            return {"latents": (vae.post_quant_conv(z) if vae.post_quant_conv is not None else z).numpy()}

    cleans = [clean_latents(f, np.asarray(reference(f)[0]), alphas, prediction_type, guided=g) for f, g in calibration]
    inputs = [decoder_input(crop(c)) for c in cleans if c is not None]
    if not inputs:
        raise ValueError("no kept step was past the noisiest, where the UNet predicts a picture's latents")
    ov_decoder = convert_module(*traceable_decoder(vae))
    quantized = quantize(ov_decoder, inputs)
    options = compile_options(job["precision"])
    bf16 = core.compile_model(job["decoder_ir"], "CPU", options)
    int8 = core.compile_model(quantized, "CPU", options)
    held_out = decoder_input(int8_latents)
    drift = psnr_db(decoded_pixels(int8(held_out)[0]), decoded_pixels(bf16(held_out)[0]))
    del bf16, int8
    meta = {"activations": METHOD, "drift_psnr_db": round(drift, 3), "drift": "pixel PSNR of the UNet's drift run's image",
            "calibration_inputs": len(inputs), "calibration_crop": DECODER_CROP, "from": job["decoder_ir"]}  # fmt: skip
    save_ir(quantized, Path(job["decoder_out"]), started, meta=meta)
    return meta


def quantize(ov_model: Any, calibration: list[dict[str, np.ndarray]]) -> Any:
    """int8 weights and activations with nncf's transformer settings: softmax, layer/group norms and the attention's
    score path stay in float, SmoothQuant evens the matmul inputs' ranges."""
    import nncf

    return nncf.quantize(ov_model, nncf.Dataset(calibration), subset_size=len(calibration),
                         model_type=nncf.ModelType.TRANSFORMER)  # fmt: skip


def child_main(work: Path) -> None:
    """Quantize the saved UNet on the saved inputs, measure its drift against the bf16 IR, write the int8 IR."""
    import openvino as ov
    import torch
    from diffusers import UNet2DConditionModel

    from .openvino_backend import compile_options, convert_module, save_ir, traceable_unet

    try:
        os.nice(10)  # the server's requests come first
    except OSError:
        pass
    job = json.loads((work / "job.json").read_text())
    started = time.perf_counter()
    stored = np.load(work / "inputs.npz")
    feeds: dict[str, dict[int, dict[str, np.ndarray]]] = {"calibration": {}, "held_out": {}}
    for key in stored.files:
        kind, index, name = key.split("/")
        feeds[kind].setdefault(int(index), {})[name] = stored[key]
    calibration = [unet_inputs(feeds["calibration"][i]) for i in sorted(feeds["calibration"])]
    held_out = [unet_inputs(feeds["held_out"][i]) for i in sorted(feeds["held_out"])]
    unet = UNet2DConditionModel.from_pretrained(work / "unet", torch_dtype=torch.float32).eval()
    ov_model = convert_module(*traceable_unet(unet, sdxl=job["sdxl"]))
    del unet
    gc.collect()
    quantized = quantize(ov_model, [f for f, _ in calibration])
    del ov_model
    gc.collect()
    core = ov.Core()
    options = compile_options(job["precision"])
    reference, candidate = core.compile_model(job["bf16_ir"], "CPU", options), core.compile_model(quantized, "CPU", options)
    step = min(psnr_db(np.asarray(candidate(f)[0]), np.asarray(reference(f)[0])) for f, _ in held_out)
    ends = [(denoised(candidate, f, job["scheduler"], guided=g), denoised(reference, f, job["scheduler"], guided=g))
            for f, g in held_out]  # fmt: skip
    drift = min(psnr_db(int8_end, bf16_end) for int8_end, bf16_end in ends)
    meta = {"activations": METHOD, "drift_psnr_db": round(drift, 3), "drift_steps": DRIFT_STEPS,
            "step_psnr_db": round(step, 3), "calibration_inputs": len(calibration), "held_out_inputs": len(held_out),
            "scheduler": job["scheduler"]["class"], "from": job["bf16_ir"]}  # fmt: skip
    del candidate
    gc.collect()
    if "decoder_out" in job:  # before the UNet's IR, whose model.xml tells the server the calibration is done
        try:
            meta["vae_decoder"] = quantize_decoder(work, job, core, reference, calibration, ends[0][0])
        except Exception as exc:  # the UNet's int8 stands on its own; the decoder stays in bf16, saying why
            meta["decoder_error"] = f"its int8 calibration failed ({type(exc).__name__}: {str(exc)[:200]})"
    del reference
    save_ir(quantized, Path(job["out"]), started, meta=meta)
    print(json.dumps(meta))


if __name__ == "__main__":
    child_main(Path(sys.argv[1]))
