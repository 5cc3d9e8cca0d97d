"""Quantized weights as rungs of the memory ladder: which level and method fit this device, and applying them."""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .choice import Choice
from .device import DeviceFacts
from .memory import (
    DEFAULT_HEADROOM,
    MIN_HEADROOM_BYTES,
    ActivationEstimate,
    MemoryPlan,
    ModelFootprint,
    _gib,
    _peak_bytes_per_plan,
    choose_memory_plan,
)

log = logging.getLogger(__name__)

GIB = 1024**3
# Text encoders at least this big are quantized with the denoiser (T5-XXL ~9.5 GB, Qwen2.5-VL ~16 GB in bf16);
# CLIP encoders (0.25-1.4 GB) are left alone: they run once per request and save little.
BIG_TEXT_ENCODER_BYTES = 2 * GIB


@dataclass(frozen=True)
class QuantMethod:
    """One way to quantize weights and where it runs."""

    id: str
    label: str
    level: str  # "int8" (8-bit weights, incl. fp8) or "4bit"
    bytes_per_weight: float  # stored bytes per weight, scales included
    package: str  # the import name that must be installed
    device_kinds: frozenset[str]
    min_compute_capability: tuple[int, int] | None = None  # CUDA only
    backend: str = "torch"  # the backend whose weights it rewrites
    # False: not a rung of the memory ladder (int8/4bit never pick it); asked for by name, or chosen by its backend.
    ladder: bool = True


METHODS: dict[str, QuantMethod] = {
    m.id: m
    for m in (
        # fp8 weight-only keeps bf16's layout with an 8-bit float; Ada/Hopper (8.9+) compute in it natively.
        QuantMethod("torchao_fp8", "torchao float8 weight-only", "int8", 1.0, "torchao", frozenset({"cuda"}), (8, 9)),
        # SDNQ int8: weights in groups with an fp32 scale each, dequantized by a torch.compile'd kernel before a bf16
        # matmul. Ahead of torchao int8 because it is faster on CPU: a 3072->12288 Linear on 1536 tokens (FLUX.1's MLP
        # at 512²), bf16 weights 208/285 ms, SDNQ int8 273/249 ms, torchao int8 516/395 ms (two runs, x86_64, 2 shared
        # cores, load 4.7); eager, without compile, SDNQ took 442 ms. Relative output error: 0.48% vs torchao's 0.52%.
        QuantMethod("sdnq_int8", "SDNQ int8", "int8", 1.0 + 1 / 64, "sdnq", frozenset({"cpu", "cuda", "rocm", "xpu"})),
        # int8 weights with a per-channel scale; the matmul dequantizes, so it runs wherever torch does.
        QuantMethod("torchao_int8", "torchao int8 weight-only", "int8", 1.0 + 1 / 64, "torchao", frozenset({"cpu", "cuda"})),
        # The OpenVINO UNet's IR written with int8 weights (a scale and zero point per output channel): half the
        # memory, but the CPU dequantizes every weight each step: SD 1.5 at 512² ran 7.3 s/step vs 1.8 s in bf16
        # (benchmarks/int8_cpu.py), so it comes after the torch methods and is the int8 rung only without them.
        QuantMethod("nncf_int8", "NNCF int8 weight compression", "int8", 1.0 + 1 / 64, "nncf", frozenset({"cpu"}),
                    backend="openvino"),
        # int8 weights and activations for the OpenVINO UNet, calibrated on a model's first requests in the
        # background (engine/backends/openvino_int8.py): faster than bf16 where the CPU has VNNI/AMX. A speed
        # method, not a memory rung: the OpenVINO backend takes it under auto where its measured drift is small.
        QuantMethod("nncf_w8a8", "NNCF int8 weights and activations", "int8", 1.0 + 1 / 64, "nncf", frozenset({"cpu"}),
                    backend="openvino", ladder=False),
        # SDNQ 4-bit: unsigned 4-bit weights in 64-weight groups with an fp32 scale and zero point each (uint4, SDNQ's
        # recommended 4-bit type: 6.4% relative error on the Linear above vs 7.0% for symmetric int4, and faster).
        QuantMethod("sdnq_int4", "SDNQ 4-bit (uint4)", "4bit", 0.5 + 8 / 64, "sdnq", frozenset({"cpu", "cuda", "rocm", "xpu"})),
        # bitsandbytes NormalFloat4: 64-weight blocks with an fp32 absmax each (CPU too since bitsandbytes 0.48). After
        # SDNQ's uint4 for quality: on the Linear above nf4 ran 318 ms against uint4's 351 ms (bf16 297 ms) but erred
        # 9.1% against 6.4% (benchmarks/linear_4bit.py); the 4-bit rung takes it where SDNQ is not installed.
        QuantMethod("bnb_nf4", "bitsandbytes nf4", "4bit", 0.5 + 4 / 64, "bitsandbytes", frozenset({"cuda", "cpu", "xpu"})),
    )
}  # fmt: skip
LEVELS = ("int8", "4bit")  # the ladder's quantized rungs, from least to most saving
SETTING_VALUES = ("auto", "none", *LEVELS, *METHODS)


def installed_packages() -> frozenset[str]:
    """The quantization packages importable here (found, not imported: torchao takes seconds to import)."""
    return frozenset(m.package for m in METHODS.values() if importlib.util.find_spec(m.package) is not None)


def method_unavailable(method: QuantMethod, facts: DeviceFacts, *, installed: Iterable[str], backend: str = "torch") -> str | None:
    """Why `method` cannot run here, or None when it can."""
    if method.package not in set(installed):
        return f"{method.label} needs the {method.package} package (not installed)"
    if facts.kind not in method.device_kinds:
        return f"{method.label} runs on {', '.join(sorted(method.device_kinds))}, not {facts.kind}"
    if method.min_compute_capability is not None:
        cc = facts.compute_capability
        if cc is None or tuple(cc) < method.min_compute_capability:
            need = ".".join(map(str, method.min_compute_capability))
            have = ".".join(map(str, cc)) if cc else "unknown"
            return f"{method.label} needs CUDA compute capability {need}+ (this device: {have})"
    # A torch method runs whatever the model's backend (the engine then runs that model on torch); others need theirs.
    if method.backend not in ("torch", backend):
        return f"{method.label} rewrites {method.backend} models; this model runs on {backend}"
    return None


def runnable_methods(level: str, facts: DeviceFacts, *, installed: Iterable[str], backend: str = "torch") -> tuple[list[str], list[str]]:
    """(the methods of `level` that run here, in METHODS' order of preference: the fastest first, the more accurate
    4-bit one where speeds are close; why each other one does not). A torch method on a model of another backend
    moves that model to torch."""
    installed = frozenset(installed)
    runnable, skipped = [], []
    for method in METHODS.values():
        if method.level != level or not method.ladder:
            continue
        why = method_unavailable(method, facts, installed=installed, backend=backend)
        if why is None:
            runnable.append(method.id)
        else:
            skipped.append(why)
    return runnable, skipped


def choose_method(level: str, facts: DeviceFacts, *, installed: Iterable[str], backend: str = "torch") -> Choice[str | None]:
    """The preferred method of `level` that runs here, or None with why not."""
    runnable, skipped = runnable_methods(level, facts, installed=installed, backend=backend)
    if runnable:
        return Choice(runnable[0], f"{METHODS[runnable[0]].label} runs on {facts.kind}")
    return Choice(None, "; ".join(skipped) or f"no {level} method")


def quantized_footprint(footprint: ModelFootprint, method: QuantMethod, dtype_bytes: int) -> ModelFootprint:
    """The footprint once the denoiser and big text encoders hold `method`'s weights (an estimate: all weights)."""
    scale = method.bytes_per_weight / dtype_bytes
    encoders = tuple(int(b * scale) if b >= BIG_TEXT_ENCODER_BYTES else b for b in footprint.text_encoder_bytes)
    return replace(footprint, denoiser_bytes=int(footprint.denoiser_bytes * scale), text_encoder_bytes=encoders)


def quantized_components(footprint: ModelFootprint, text_encoder_names: tuple[str, ...] = ()) -> list[str]:
    """Which components a quantized rung rewrites: the denoiser and every text encoder of BIG_TEXT_ENCODER_BYTES+."""
    names = ["denoiser"]
    for index, size in enumerate(footprint.text_encoder_bytes):
        if size >= BIG_TEXT_ENCODER_BYTES:
            names.append(text_encoder_names[index] if index < len(text_encoder_names) else f"text_encoder_{index + 1}")
    return names


@dataclass(frozen=True)
class PlannedWeights:
    """The ladder's answer: quantization (None: the model's own dtype) and the memory plan for those weights."""

    quantization: Choice[str | None]
    memory: Choice[MemoryPlan]
    footprint: ModelFootprint  # the weights as planned (quantized where quantization says so)


def normalize_setting(requested: str) -> str:
    name = requested.strip().lower().replace("-", "_")
    if name not in SETTING_VALUES:
        raise ValueError(f"quantize must be one of {', '.join(SETTING_VALUES)}; got {requested!r}")
    return name


def check_setting(requested: str, facts: DeviceFacts, *, installed: Iterable[str], backend: str = "torch") -> Choice[str | None]:
    """An explicit IMGTOOLS_QUANTIZE checked at start: a method (or level) that cannot run here is a ValueError."""
    name = normalize_setting(requested)
    if name in ("auto", "none"):
        return Choice(None, f"IMGTOOLS_QUANTIZE={name}")
    if name in LEVELS:
        chosen = choose_method(name, facts, installed=installed, backend=backend)
        if chosen.value is None:
            raise ValueError(f"quantize {name!r} cannot run here: {chosen.reason}; use auto or none")
        return Choice(chosen.value, f"IMGTOOLS_QUANTIZE={name}: {chosen.reason}")
    why = method_unavailable(METHODS[name], facts, installed=installed, backend=backend)
    if why is not None:
        raise ValueError(f"quantize {name!r} cannot run here: {why}; use auto or none")
    return Choice(name, f"IMGTOOLS_QUANTIZE={name}")


def plan_weights(
    facts: DeviceFacts,
    footprint: ModelFootprint,
    activations: ActivationEstimate,
    *,
    dtype_bytes: int,
    quantize: str = "auto",
    memory: str = "auto",
    installed: Iterable[str] = (),
    backend: str = "torch",
    headroom: float = DEFAULT_HEADROOM,
) -> PlannedWeights:
    """The memory ladder with quantized rungs: resident at the model's dtype, then int8 weights resident, then
    4-bit weights resident, then the offload plans, the first whose estimated peak fits.

    A pure function of its arguments. Quantized weights that stay on the device beat offloading, which moves
    every weight across the bus each step; on a CPU there is nothing to offload to, so the smallest rung that
    runs is taken even when RAM stays short.
    """
    name = normalize_setting(quantize)
    installed = frozenset(installed)
    if name == "none" or (name == "auto" and memory != "auto"):
        why = "IMGTOOLS_QUANTIZE=none" if name == "none" else f"IMGTOOLS_MEMORY={memory} is set; weights kept as loaded"
        return PlannedWeights(Choice(None, why), choose_memory_plan(facts, footprint, activations, memory, headroom=headroom),
                              footprint)
    if name in METHODS and METHODS[name].backend not in ("torch", backend):
        # Checked at start against the backend it needs; a model that runs elsewhere (FLUX on torch) keeps its weights.
        why = f"IMGTOOLS_QUANTIZE={name} applies to models on {METHODS[name].backend}; this one runs on {backend}, weights kept as loaded"
        return PlannedWeights(Choice(None, why), choose_memory_plan(facts, footprint, activations, memory, headroom=headroom),
                              footprint)
    if name != "auto":
        method = check_setting(name, facts, installed=installed, backend=backend)
        planned = quantized_footprint(footprint, METHODS[method.value], dtype_bytes)
        return PlannedWeights(method, choose_memory_plan(facts, planned, activations, memory, headroom=headroom), planned)

    usable = facts.free_memory_bytes - max(MIN_HEADROOM_BYTES, int(headroom * facts.total_memory_bytes))
    where = f"{_gib(usable)} usable on {facts.name}"

    def resident_need(fp: ModelFootprint) -> int:
        return _peak_bytes_per_plan(fp, activations)[MemoryPlan.VAE_TILING]

    full = resident_need(footprint)
    if full <= usable:
        return PlannedWeights(
            Choice(None, f"weights as loaded fit resident (~{_gib(full)} with activations, {where}); not quantized"),
            choose_memory_plan(facts, footprint, activations, headroom=headroom),
            footprint,
        )
    skipped: list[str] = []
    smallest: tuple[str, ModelFootprint, int] | None = None
    for level in LEVELS:
        # The preferred method of the level first; a smaller one of the same level where only it fits.
        methods, unavailable = runnable_methods(level, facts, installed=installed, backend=backend)
        if not methods:
            skipped.append(f"no {level} rung ({'; '.join(unavailable) or f'no {level} method'})")
            continue
        for method_id in methods:
            planned = quantized_footprint(footprint, METHODS[method_id], dtype_bytes)
            need = resident_need(planned)
            if need <= usable:
                reason = (
                    f"weights as loaded need ~{_gib(full)}, {where}; {'; '.join([*skipped, ''])}{level} weights "
                    f"({method_id}) stay resident at ~{_gib(need)}, faster than offloading"
                )
                return PlannedWeights(Choice(method_id, reason),
                                      choose_memory_plan(facts, planned, activations, headroom=headroom), planned)  # fmt: skip
            skipped.append(f"{level} ({method_id}) needs ~{_gib(need)}")
            if smallest is None or need < smallest[2]:
                smallest = (method_id, planned, need)
    if facts.kind == "cpu" and smallest is not None:
        # Nowhere to offload to: the smallest weights that run are the best there is.
        method_id, planned, need = smallest
        reason = f"RAM is short ({where}); {'; '.join(skipped)}; using the smallest, {method_id}, expect swapping"
        return PlannedWeights(Choice(method_id, reason), choose_memory_plan(facts, planned, activations, headroom=headroom),
                              planned)
    plan = choose_memory_plan(facts, footprint, activations, headroom=headroom)
    return PlannedWeights(
        Choice(None, f"quantized weights do not fit resident ({'; '.join(skipped)}, {where}); {plan.value.value} instead"),
        plan,
        footprint,
    )


# ----- applying -----


def storage_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor really holds: a quantized tensor subclass counts its inner data and scales, not its dtype."""
    quant_state = getattr(tensor, "quant_state", None)  # bitsandbytes' Params4bit: packed bytes, absmax beside them
    if quant_state is not None:
        return tensor.numel() * tensor.element_size() + storage_bytes(quant_state.absmax)
    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is not None and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        return sum(storage_bytes(getattr(tensor, n)) for n in names)
    return tensor.numel() * tensor.element_size()


def module_bytes(module: torch.nn.Module) -> int:
    return sum(storage_bytes(t) for t in (*module.parameters(), *module.buffers()))


@dataclass
class QuantizationReport:
    """What quantization ran on a loaded model, as results and engine_status show it."""

    method: str
    reason: str
    components: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0

    def as_dict(self) -> dict[str, Any]:
        info = {"method": self.method, "reason": self.reason, "components": list(self.components)}
        if self.bytes_before:  # unknown for weights the checkpoint stored quantized
            info["bytes_before"] = self.bytes_before
        info["bytes_after"] = self.bytes_after
        return info


# ----- checkpoints stored quantized (GGUF files, SDNQ and bitsandbytes repos) -----

# Where diffusers and transformers load each stored quantization (its quant_method), and the package it needs.
STORED: dict[str, tuple[str, frozenset[str] | None]] = {
    "gguf": ("gguf", None),
    "sdnq": ("sdnq", None),
    "torchao": ("torchao", None),
    # diffusers' bitsandbytes loader asks for an accelerator (its CPU backend serves bnb_nf4 on loaded weights only).
    "bitsandbytes": ("bitsandbytes", frozenset({"cuda", "xpu"})),
}


def stored_quantization(folder: Path) -> dict[str, str]:
    """The components of a diffusers folder whose config says their weights are stored quantized: name -> quant_method."""
    found: dict[str, str] = {}
    for config in sorted(folder.glob("*/config.json")):
        try:
            declared = json.loads(config.read_text()).get("quantization_config")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(declared, dict) and declared.get("quant_method"):
            found[config.parent.name] = str(declared["quant_method"])
    return found


def stored_quantization_refusal(found: dict[str, str], device_kind: str) -> str | None:
    """Why weights stored with these quantizations cannot be loaded here, or None when they can."""
    for component, method in found.items():
        package, devices = STORED.get(method, (None, None))
        if package is None:
            return f"its {component} is stored quantized with {method!r}, which this build does not load"
        if importlib.util.find_spec(package) is None:
            return f"its {component} is stored quantized with {method}, which needs the {package} package: pip install 'imgtools-mcp[quant]'"
        if devices is not None and device_kind not in devices:
            return (f"its {component} is stored as {method} 4-bit, which diffusers loads on {' or '.join(sorted(devices))} "
                    f"only, not {device_kind}; load the unquantized model with IMGTOOLS_QUANTIZE=bnb_nf4 (or 4bit) instead")  # fmt: skip
    return None


def checkpoint_quantization(pipe) -> QuantizationReport | None:
    """What a loaded pipeline's checkpoint stored quantized (diffusers and transformers mark such a model with its
    quantizer), as the result's quantization report; None when nothing was."""
    methods: dict[str, str] = {}
    for name, component in pipe.components.items():
        config = getattr(getattr(component, "hf_quantizer", None), "quantization_config", None)
        method = getattr(config, "quant_method", None)
        if isinstance(component, torch.nn.Module) and method is not None:
            methods[name] = str(getattr(method, "value", method))
    if not methods:
        return None
    kinds = sorted(set(methods.values()))
    names = list(methods)
    reason = (f"the checkpoint stores {', '.join(names)} quantized ({', '.join(kinds)}): loaded as stored, "
              "IMGTOOLS_QUANTIZE does not quantize it again")  # fmt: skip
    after = sum(module_bytes(getattr(pipe, name)) for name in names)
    return QuantizationReport("+".join(kinds), reason, names, 0, after)


def backend_quantization(pipe, choice: Choice[str | None], dtype_bytes: int) -> QuantizationReport | None:
    """The report for a method the model's backend applies to its converted denoiser (nncf_int8 on the OpenVINO
    UNet), or None for a torch method. The torch weights stay as loaded (a request the backend declines runs on
    them); bytes_after is an estimate until the backend writes the IR and puts the real size in."""
    method = METHODS[choice.value] if choice.value is not None else None
    if method is None or method.backend == "torch":
        return None
    unet = getattr(pipe, "unet", None)
    before = module_bytes(unet) if isinstance(unet, torch.nn.Module) else 0
    return QuantizationReport(method.id, choice.reason, ["unet"], before, int(before * method.bytes_per_weight / dtype_bytes))


def _torchao_config(method_id: str):
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

    return Float8WeightOnlyConfig() if method_id == "torchao_fp8" else Int8WeightOnlyConfig()


def sdnq_config(method_id: str):
    """The SDNQ settings `method_id` applies: SDNQ's defaults (its per-model skip lists included: embedders, norms and
    the output projection stay), but with no 16384-weight floor, so every other Linear is rewritten as torchao does
    (a real model's Linear layers are all far above it; tiny test models are not)."""
    from sdnq import SDNQConfig

    return SDNQConfig(weights_dtype="int8" if method_id == "sdnq_int8" else "uint4", minimum_allowed_numel=0)


# Linear layers nf4 leaves as they are, by name (as SDNQ does): the embedders (timestep, text, patch) and the output
# projection and its norm, small and where the error would reach every token or the result directly.
BNB_KEPT = ("embed", "proj_out", "norm_out")


def bnb_nf4(module: torch.nn.Module) -> torch.nn.Module:
    """The Linear layers of `module` (BNB_KEPT aside) as bitsandbytes nf4 Linear4bit (64-weight blocks, no double
    quantization, as diffusers' BitsAndBytesConfig defaults), computing in the Linear's own dtype on its device."""
    import bitsandbytes as bnb

    for path, parent in list(module.named_modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or any(kept in f"{path}.{name}" for kept in BNB_KEPT):
                continue
            weight = child.weight.detach()
            layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=weight.dtype, quant_type="nf4", device="meta")  # fmt: skip
            layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", blocksize=64,
                                             compress_statistics=False)  # fmt: skip
            if child.bias is not None:
                layer.bias = torch.nn.Parameter(child.bias.detach(), requires_grad=False)
            setattr(parent, name, layer.to(weight.device))  # moving a Params4bit to its device quantizes it
    return module


def quantize_module(module: torch.nn.Module, method_id: str) -> torch.nn.Module:
    """Rewrite one loaded module's Linear weights in place with `method_id` (weight-only: convolutions and norms stay)."""
    if method_id == "bnb_nf4":
        return bnb_nf4(module)
    if METHODS[method_id].package == "sdnq":
        from sdnq import sdnq_post_load_quant

        sdnq_post_load_quant(module, quantization_config=sdnq_config(method_id))
        return module
    from torchao.quantization import quantize_

    # int8/fp8 with a scale per output channel.
    quantize_(module, _torchao_config(method_id))
    return module


def apply_quantization(pipe, choice: Choice[str | None], footprint: ModelFootprint) -> QuantizationReport | None:
    """Rewrite the weights of the components the plan names in place; None when the plan quantizes nothing."""
    if choice.value is None:
        return None
    method = METHODS[choice.value]
    encoder_names = tuple(n for n, c in pipe.components.items() if n.startswith("text_encoder") and isinstance(c, torch.nn.Module))
    wanted = quantized_components(footprint, encoder_names)
    names = [("transformer" if getattr(pipe, "transformer", None) is not None else "unet") if n == "denoiser" else n
             for n in wanted]
    report = QuantizationReport(method.id, choice.reason)
    for name in names:
        module = getattr(pipe, name, None)
        if not isinstance(module, torch.nn.Module):
            continue
        before = module_bytes(module)
        quantize_module(module, method.id)
        report.components.append(name)
        report.bytes_before += before
        report.bytes_after += module_bytes(module)
    log.info("quantized %s with %s: %d -> %d bytes", ", ".join(report.components), method.id,
             report.bytes_before, report.bytes_after)
    return report


def machine_report(facts: DeviceFacts, setting: str, *, installed: Iterable[str], backend: str = "torch") -> dict[str, Any]:
    """What `doctor` shows: the setting, the method each rung would use on this device and every method's status."""
    installed = frozenset(installed)
    report: dict[str, Any] = {"setting": setting, "installed": sorted(installed)}
    try:
        explicit = check_setting(setting, facts, installed=installed, backend=backend)
        report["setting_ok"] = True
        report["setting_reason"] = explicit.reason
    except ValueError as exc:
        report["setting_ok"] = False
        report["setting_reason"] = str(exc)
    report["levels"] = {}
    for level in LEVELS:
        chosen = choose_method(level, facts, installed=installed, backend=backend)
        report["levels"][level] = {"method": chosen.value, "reason": chosen.reason}
    if backend == "openvino":
        from .backends.openvino_int8 import choose as choose_int8_activations

        int8 = choose_int8_activations(setting, facts, installed)
        report["int8_activations"] = {"enabled": int8.value, "reason": int8.reason}
    report["methods"] = {
        m.id: {"available": (why := method_unavailable(m, facts, installed=installed, backend=backend)) is None,
               **({"reason": why} if why else {})}
        for m in METHODS.values()
    }
    return report
