"""What one model family declares (FamilySpec) and what the engine knows about one model of it (FamilyInfo)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["txt2img", "img2img", "inpaint", "instruct"]
MODES: tuple[Mode, ...] = ("txt2img", "img2img", "inpaint", "instruct")
# Which guidance a family has: classifier-free guidance (two passes), FLUX-style distilled guidance
# (a conditioning input of the transformer, one pass; FluxPipeline still calls it guidance_scale), or
# Qwen-Image's true CFG (`true_cfg_scale`, with a negative prompt).
GuidanceKnob = Literal["cfg", "distilled", "true_cfg", "none"]
# The diffusers call argument each knob goes into.
GUIDANCE_KWARG: dict[str, str | None] = {
    "cfg": "guidance_scale",
    "distilled": "guidance_scale",
    "true_cfg": "true_cfg_scale",
    "none": None,
}
# Sampler kinds: "discrete" (the DDPM-style noise schedules of SD 1.x/2.x/XL) or "flow" (flow matching).
SamplerKind = Literal["discrete", "flow"]
Configs = Mapping[str, Mapping[str, Any]]  # component folder name -> its config.json (plus "model_index")


@dataclass(frozen=True)
class Variant:
    """A distilled or otherwise special checkpoint of a family, with the defaults it was trained for."""

    id: str
    label: str
    name_markers: tuple[str, ...] = ()  # substrings of the model's name that mark it (e.g. "turbo")
    # Recognised from configs as well (e.g. FLUX.1 schnell has no guidance embedding); None: names only.
    detect: Callable[[Configs], bool] | None = None
    default_steps: int | None = None
    default_guidance: float | None = None
    distilled: bool = True  # few-step: more steps only blur, and guidance was trained away
    token_limit: int | None = None


@dataclass(frozen=True)
class Component:
    """A component's memory at full size in bf16, for the memory planner and the README."""

    name: str
    bytes: int
    note: str = ""


@dataclass(frozen=True)
class FamilySpec:
    """Everything the engine needs to know about a family; one per family module, registered once."""

    id: str
    label: str
    # --- recognition ---
    pipeline_classes: tuple[str, ...]  # model_index.json `_class_name`s that belong to this family
    denoiser: Literal["unet", "transformer"]
    denoiser_classes: tuple[str, ...] = ()
    # Finer decision among families sharing class names (SD 1.x vs 2.x); gets model_index + configs.
    recognise: Callable[[Configs], bool] | None = None
    priority: int = 0  # tried first when several families claim the same folder
    # Single-file checkpoints: tensor-name prefixes that only this family's original layout has.
    state_dict_markers: tuple[str, ...] = ()
    state_dict_fallback: bool = False  # the family an original-layout UNet checkpoint with no other marker is
    single_file_class: str | None = None
    # A dedicated inpainting checkpoint: its denoiser's input channels (SD's 9: latents, mask, masked image),
    # read from the folder's config or from this tensor's shape in a single file.
    inpainting_in_channels: int | None = None
    state_dict_in_key: str | None = None
    # --- pipelines per mode (None: diffusers has none for this family) ---
    pipelines: Mapping[str, str | None] = field(default_factory=dict)
    inpaint_pipeline_for_inpainting_model: str | None = None  # a dedicated inpainting checkpoint's own class
    # --- sizes ---
    native_size: int = 512
    size_multiple: int = 8
    vae_scale_factor: int = 8
    latent_channels: int = 4
    # --- defaults ---
    default_steps: int = 25
    default_guidance: float = 7.0
    guidance_knob: GuidanceKnob = "cfg"
    negative_prompt: bool = True
    sampler_kind: SamplerKind = "discrete"
    samplers: tuple[str, ...] = ()  # names in engine/samplers.py that fit, besides "default"
    token_limit: int = 77
    variants: tuple[Variant, ...] = ()
    # --- features ---
    lora: bool = True
    lora_context_dim: int | None = None  # the text width a LoRA's cross-attention key reads (UNet families)
    lora_markers: tuple[str, ...] = ()  # LoRA tensor-name fragments only this family's LoRAs have
    # Families whose denoisers share one layout take each other's LoRAs (FLUX.1 dev, Kontext, Fill);
    # None: the family's own id.
    lora_layout: str | None = None
    backends: frozenset[str] = frozenset({"torch"})
    components: tuple[Component, ...] = ()
    max_reference_images: int = 0  # extra images an instruction edit takes besides `image`
    # Key into engine/memory.py's activation shapes; None: the planner uses a transformer estimate.
    activation_shape: str | None = None
    # Extra `from_pretrained` arguments for a folder (e.g. a processor loaded image-only): (folder, dtype) -> kwargs.
    load_overrides: Callable[[Any, Any], dict[str, Any]] | None = None
    # Fix-ups once a pipeline is loaded (e.g. a config value a diffusers pipeline reads but the model lacks).
    after_load: Callable[[Any], None] | None = None
    # Family-specific call arguments: (job, kwargs built by engine/pipeline_call.py) -> the kwargs to call with.
    call_kwargs: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None

    @property
    def value(self) -> str:
        """The id, as the old `Family` enum's value (callers print and compare it)."""
        return self.id

    def pipeline_for(self, mode: str) -> str | None:
        return self.pipelines.get(mode)

    @property
    def lora_layout_id(self) -> str:
        return self.lora_layout or self.id

    @property
    def guidance_kwarg(self) -> str | None:
        return GUIDANCE_KWARG[self.guidance_knob]

    @property
    def instruct(self) -> bool:
        return self.pipelines.get("instruct") is not None

    @property
    def footprint_bytes(self) -> int:
        return sum(c.bytes for c in self.components)

    def variant_for(self, name: str, configs: Configs | None = None) -> Variant | None:
        lowered = name.lower()
        for variant in self.variants:
            if configs is not None and variant.detect is not None and variant.detect(configs):
                return variant
            if any(marker in lowered for marker in variant.name_markers):
                return variant
        return None

    def inpainting_model(self, configs: Configs) -> bool:
        in_channels = configs.get(self.denoiser, {}).get("in_channels")
        return self.inpainting_in_channels is not None and in_channels == self.inpainting_in_channels

    def inpainting_state_dict(self, shapes: Mapping[str, tuple[int, ...]]) -> bool:
        shape = shapes.get(self.state_dict_in_key or "")
        return self.inpainting_in_channels is not None and shape is not None and len(shape) > 1 and (
            shape[1] == self.inpainting_in_channels
        )

    def claims(self, configs: Configs) -> bool:
        """Whether a diffusers folder (its model_index and component configs) belongs to this family."""
        index = configs.get("model_index", {})
        cls = str(index.get("_class_name", ""))
        denoiser_cls = str(configs.get(self.denoiser, {}).get("_class_name", ""))
        named = cls in self.pipeline_classes or (bool(self.denoiser_classes) and denoiser_cls in self.denoiser_classes)
        if not named:
            return False
        return self.recognise is None or self.recognise(configs)

    def __repr__(self) -> str:
        return f"FamilySpec({self.id!r})"

    def __hash__(self) -> int:
        return hash(self.id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FamilySpec) and other.id == self.id


@dataclass(frozen=True)
class FamilyInfo:
    """What the engine knows about one model: its family's spec, its variant, its native size, whether it inpaints only."""

    family: FamilySpec
    turbo: bool
    native_size: int
    inpainting: bool = False
    variant: Variant | None = None

    @property
    def spec(self) -> FamilySpec:
        return self.family

    @property
    def default_steps(self) -> int:
        if self.variant is not None and self.variant.default_steps is not None:
            return self.variant.default_steps
        # Distilled models (turbo, lightning, LCM) are trained for 1-4 steps; more steps only blur.
        if self.turbo:
            return 4
        return self.family.default_steps

    @property
    def default_guidance(self) -> float:
        if self.variant is not None and self.variant.default_guidance is not None:
            return self.variant.default_guidance
        # Adversarially distilled models were trained without classifier-free guidance.
        if self.turbo:
            return 0.0
        return self.family.default_guidance

    @property
    def token_limit(self) -> int:
        if self.variant is not None and self.variant.token_limit is not None:
            return self.variant.token_limit
        return self.family.token_limit

    def pipeline_for(self, mode: str) -> str | None:
        if mode == "inpaint" and self.inpainting and self.family.inpaint_pipeline_for_inpainting_model:
            return self.family.inpaint_pipeline_for_inpainting_model
        return self.family.pipeline_for(mode)

    def as_dict(self) -> dict[str, Any]:
        return {
            "family": self.family.id,
            "turbo": self.turbo,
            "native_size": self.native_size,
            "inpainting": self.inpainting,
            "variant": self.variant.id if self.variant else None,
            "guidance_knob": self.family.guidance_knob,
        }
