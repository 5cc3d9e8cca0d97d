"""FLUX.2 dev (Mistral Small 3.1 text encoder) and FLUX.2 klein (Qwen3): text to image and multi-reference edits."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from .base import Component, Configs, FamilySpec, Variant
from .registry import register

GB = 10**9
FLOW_SAMPLERS = ("euler", "unipc", "dpmpp_2m")  # flow-match versions, built with the model's shift
# Names only FLUX.2's transformer has (its single blocks fuse QKV with the MLP; modulation is shared per stream);
# FLUX.1's "single_transformer_blocks" is in FLUX.2 LoRAs too, so FLUX.2 is tried before FLUX.1.
FLUX2_LORA_MARKERS = ("to_qkv_mlp_proj", "double_stream_modulation", "single_stream_modulation")


def no_negative_prompt(job: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """FLUX.2's pipelines take no negative prompt (klein's CFG runs against an empty prompt of its own)."""
    del job  # the same for every mode
    return {key: value for key, value in kwargs.items() if key != "negative_prompt"}


def _processor_needs_torchvision(folder: Path) -> bool:
    index = json.loads((Path(folder) / "model_index.json").read_text())
    library, class_name = (index.get("tokenizer") or [None, None])[:2]
    return library == "transformers" and "Processor" in str(class_name) and importlib.util.find_spec("torchvision") is None


def defer_processor(folder: Path, dtype: Any) -> dict[str, Any]:
    """FLUX.2 dev's `tokenizer/` is a Pixtral processor, which transformers 5 builds only with torchvision (and diffusers
    refuses any stand-in for it); without torchvision it is skipped at load and its tokenizer side added after."""
    del dtype  # a tokenizer has no weights
    return {"tokenizer": None} if _processor_needs_torchvision(folder) else {}


def text_only_tokenizer(pipe: Any) -> None:
    """The pipeline uses only the processor's tokenizer (prompts are text; caption upsampling is not used here)."""
    if getattr(pipe, "tokenizer", True) is not None:
        return
    from transformers import AutoTokenizer

    tokenizer_dir = Path(pipe.config._name_or_path) / "tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if not tokenizer.chat_template:
        # A processor may keep its chat template beside the tokenizer files rather than in tokenizer_config.json.
        jinja, legacy = tokenizer_dir / "chat_template.jinja", tokenizer_dir / "chat_template.json"
        if jinja.is_file():
            tokenizer.chat_template = jinja.read_text()
        elif legacy.is_file():
            tokenizer.chat_template = json.loads(legacy.read_text())["chat_template"]
    pipe.register_modules(tokenizer=tokenizer)


def _step_distilled(configs: Configs) -> bool:
    return bool(configs.get("model_index", {}).get("is_distilled"))


_COMMON: dict[str, Any] = dict(
    denoiser="transformer",
    native_size=1024,
    # An 8x autoencoder and 2x2 latent patches, as FLUX.1.
    size_multiple=16,
    vae_scale_factor=8,
    latent_channels=32,
    negative_prompt=False,
    sampler_kind="flow",
    samplers=FLOW_SAMPLERS,
    token_limit=512,
    lora=True,
    lora_markers=FLUX2_LORA_MARKERS,
    lora_layout="flux2",  # dev and klein share the layout (their widths differ: a mismatch fails at load)
    backends=frozenset({"torch"}),
    call_kwargs=no_negative_prompt,
)

FLUX2 = register(
    FamilySpec(
        id="flux2",
        label="FLUX.2 dev",
        pipeline_classes=("Flux2Pipeline",),
        priority=35,
        pipelines={
            "txt2img": "Flux2Pipeline",
            "img2img": None,
            "inpaint": None,
            # The same pipeline with `image=[...]`: the edit is conditioned on every reference.
            "instruct": "Flux2Pipeline",
        },
        default_steps=50,
        default_guidance=4.0,
        guidance_knob="distilled",  # a guidance embedding: one pass per step
        load_overrides=defer_processor,
        after_load=text_only_tokenizer,
        max_reference_images=5,  # six images in all: BFL's recommended maximum for dev (its API models take 8-10)
        components=(
            Component("transformer", int(64.4 * GB), "32B MMDiT"),
            Component("text_encoder", int(48.0 * GB), "Mistral Small 3.1 24B"),
            Component("vae", int(0.17 * GB), "FLUX.2 autoencoder"),
        ),
        **_COMMON,
    )
)

FLUX2_KLEIN = register(
    FamilySpec(
        id="flux2-klein",
        label="FLUX.2 klein",
        pipeline_classes=("Flux2KleinPipeline", "Flux2KleinInpaintPipeline"),
        priority=36,
        pipelines={
            "txt2img": "Flux2KleinPipeline",
            "img2img": None,
            "inpaint": "Flux2KleinInpaintPipeline",
            "instruct": "Flux2KleinPipeline",
        },
        # The base (undistilled) klein: real CFG against an empty prompt.
        default_steps=50,
        default_guidance=4.0,
        guidance_knob="cfg",
        variants=(
            # The released klein 4B/9B are step-distilled (model_index `is_distilled`): 4 steps, guidance ignored.
            Variant("distilled", "distilled", detect=_step_distilled, default_steps=4, default_guidance=1.0),
        ),
        max_reference_images=3,  # four images in all, BFL's documented limit for klein 4B and 9B
        components=(
            Component("transformer", int(7.8 * GB), "4B MMDiT (klein 9B: ~18 GB)"),
            Component("text_encoder", int(8.0 * GB), "Qwen3-4B (klein 9B: Qwen3-8B, ~16 GB)"),
            Component("vae", int(0.17 * GB), "FLUX.2 autoencoder"),
        ),
        **_COMMON,
    )
)
