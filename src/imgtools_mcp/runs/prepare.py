"""What generate and edit add to the shared parameters, and which preparation each request type gets."""

from __future__ import annotations

from PIL import Image

from ..engine.families import FamilyInfo
from ..engine.ip_adapter import DEFAULT_IP_ADAPTERS
from ..params import EditRequest, GenerateRequest, GenerationParams, InpaintRequest
from .context import RunContext
from .image_run import Prepare
from .inpaint_inputs import prepare_inpaint
from .inputs import ImageInputs, InputRecord, size_for


async def prepare_generate(ctx: RunContext, request: GenerationParams, family: FamilyInfo) -> ImageInputs:
    """Nothing but the mode: text to image."""
    return ImageInputs(mode="txt2img")


async def prepare_edit(ctx: RunContext, request: EditRequest, family: FamilyInfo) -> ImageInputs:
    """The input image resolved and sized for img2img, or for an instruction edit on an instruction-edit model."""
    resolved = await ctx.resolver.resolve(request.image, param="image")
    record = InputRecord.of(resolved)
    size, note = size_for(
        resolved.image.size, ctx.settings.max_pixels, width=request.width, height=request.height,
        multiple=family.family.size_multiple,
    )
    inputs = ImageInputs(
        mode="img2img",
        image=resolved.image,
        strength=request.strength,
        default_size=size,
        infotext=record.infotext(),
        metadata=record.metadata(),
        notes=[note] if note else [],
        parameters={"image": record.reference},
    )
    if family.family.instruct:
        # The prompt is the instruction; the image and any references are the model's own inputs (engine check() notes
        # that strength does not apply).
        inputs.mode = "instruct"
        recorded = []
        for index, ref in enumerate(request.reference_images):
            resolved_ref = await ctx.resolver.resolve(ref.image, param=f"reference_images[{index}].image")
            inputs.reference_images.append((resolved_ref.image, ref.weight))
            ref_record = InputRecord.of(resolved_ref)
            recorded.append({"image": ref_record.reference, "sha256": ref_record.sha256, "weight": ref.weight})
        if recorded:
            inputs.parameters["reference_images"] = [{"image": r["image"], "weight": r["weight"]} for r in recorded]
            inputs.metadata["reference_images"] = recorded
            inputs.infotext["Reference images"] = ", ".join(f"{r['image']}:{r['weight']:g}" for r in recorded)
        inputs.infotext["Edit"] = "instruction"
        return inputs
    if request.reference_images and family.family.id in DEFAULT_IP_ADAPTERS:
        # SD 1.x/SDXL: the references steer style or subject through an IP-Adapter (engine/ip_adapter.py).
        recorded = []
        for index, ref in enumerate(request.reference_images):
            resolved_ref = await ctx.resolver.resolve(ref.image, param=f"reference_images[{index}].image")
            inputs.extra.setdefault("ip_adapter", []).append((resolved_ref.image, ref.weight))
            ref_record = InputRecord.of(resolved_ref)
            recorded.append({"image": ref_record.reference, "sha256": ref_record.sha256, "weight": ref.weight})
        inputs.parameters["reference_images"] = [{"image": r["image"], "weight": r["weight"]} for r in recorded]
        inputs.metadata["reference_images"] = recorded
        inputs.infotext["IP-Adapter"] = ", ".join(f"{r['image'][:60]}:{r['weight']:g}" for r in recorded)
        inputs.notes.append("reference_images: applied through IP-Adapter (one adapter; the weights' mean is its scale)")
    elif request.reference_images:
        inputs.notes.append(f"reference_images: {family.family.label} is not an instruction-edit model; they were not used")
    if family.inpainting:
        # A 9-channel UNet cannot run img2img; inpainting all of the image is the same operation for it.
        inputs.mode = "inpaint"
        inputs.mask = Image.new("L", resolved.image.size, 255)
        inputs.notes.append("inpainting checkpoint: the edit ran as an inpaint of the whole image")
    return inputs


# Most specific first: a sweep's base types subclass these.
PREPARE: tuple[tuple[type[GenerationParams], str, Prepare], ...] = (
    (InpaintRequest, "inpaint", prepare_inpaint),
    (EditRequest, "edit", prepare_edit),
    (GenerateRequest, "generate", prepare_generate),
)


def preparation_of(request: GenerationParams) -> tuple[str, Prepare]:
    """(tool name, preparation) for a generate, edit or inpaint request."""
    for request_type, tool, prepare in PREPARE:
        if isinstance(request, request_type):
            return tool, prepare
    raise TypeError(f"no image tool takes a {type(request).__name__}")


def references_of(request: GenerationParams) -> list[tuple[str, str, str]]:
    """The image references a request names, as (reference, parameter, mode): resolved before a task id is handed out."""
    refs = []
    if isinstance(request, EditRequest | InpaintRequest):
        refs.append((request.image, "image", "RGB"))
    if isinstance(request, EditRequest):
        refs += [(ref.image, f"reference_images[{i}].image", "RGB") for i, ref in enumerate(request.reference_images)]
    if isinstance(request, InpaintRequest) and request.mask is not None:
        refs.append((request.mask, "mask", "L"))
    return refs
