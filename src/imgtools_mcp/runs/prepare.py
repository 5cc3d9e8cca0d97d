"""What generate and edit add to the shared parameters (and every tool's reference images), and which preparation each
request type gets."""

from __future__ import annotations

from PIL import Image

from ..engine.families import FamilyInfo
from ..engine.references import families_that_can, route_for
from ..params import EditRequest, GenerateRequest, GenerationParams, InpaintRequest
from .context import RunContext, RunInputError
from .image_run import Prepare
from .inpaint_inputs import prepare_inpaint
from .inputs import ImageInputs, InputRecord, size_for


async def add_references(ctx: RunContext, request: GenerationParams, family: FamilyInfo, inputs: ImageInputs) -> None:
    """`reference_images` for the mode the inputs settled on: the model's own inputs where its pipeline takes them,
    else an IP-Adapter (engine/references.py decides); a family with neither is a one-line error naming those that can.
    Weight 0 turns an image off, so a request whose weights are all 0 runs as one without references."""
    references = list(getattr(request, "reference_images", None) or [])
    if not references:
        return
    route = route_for(family.family, inputs.mode, family.pipeline_for(inputs.mode))
    if route is None:
        raise RunInputError(
            f"reference_images: {family.family.label} models cannot take reference images in {inputs.mode} "
            f"(families that can: {families_that_can(inputs.mode)})"
        )
    recorded, active = [], []
    for index, ref in enumerate(references):
        resolved = await ctx.resolver.resolve(ref.image, param=f"reference_images[{index}].image")
        record = InputRecord.of(resolved)  # URLs without their query, data URLs shortened
        recorded.append({"image": record.reference, "sha256": record.sha256, "weight": ref.weight})
        if ref.weight > 0:
            active.append((resolved.image, ref.weight))
    if len(active) > route.limit:
        besides = " besides `image`" if inputs.mode == "instruct" else ""
        raise RunInputError(
            f"reference_images: {family.family.label} takes at most {route.limit} reference image(s){besides} "
            f"(got {len(active)})"
        )
    mechanism = route.mechanism if active else "none"
    inputs.parameters["reference_images"] = [{"image": r["image"], "weight": r["weight"]} for r in recorded]
    inputs.parameters["reference_mechanism"] = mechanism
    inputs.metadata["reference_images"] = {"mechanism": mechanism, "images": recorded}
    listed = ", ".join(f"{r['image'][:60]}:{r['weight']:g}" for r in recorded)
    if mechanism == "ip-adapter":
        inputs.extra["ip_adapter"] = active
        inputs.infotext["IP-Adapter"] = listed  # the field A1111's IP-Adapter extensions write
        inputs.notes.append("reference_images: applied through IP-Adapter (one adapter; the weights' mean is its scale)")
    elif mechanism == "native":
        inputs.reference_images = active
        inputs.infotext["Reference images"] = listed
        inputs.notes.append(f"reference_images: {family.family.label} takes them as its own inputs (weights only switch them on or off)")
    else:
        inputs.notes.append("reference_images: every weight is 0; none was applied")


async def prepare_generate(ctx: RunContext, request: GenerateRequest, family: FamilyInfo) -> ImageInputs:
    """Text to image, with any reference images."""
    inputs = ImageInputs(mode="txt2img")
    await add_references(ctx, request, family, inputs)
    return inputs


async def prepare_inpaint_with_references(ctx: RunContext, request: InpaintRequest, family: FamilyInfo) -> ImageInputs:
    """Image, mask and working area (runs/inpaint_inputs.py), with any reference images."""
    inputs = await prepare_inpaint(ctx, request, family)
    await add_references(ctx, request, family, inputs)
    return inputs


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
        inputs.infotext["Edit"] = "instruction"
    elif family.inpainting:
        # A 9-channel UNet cannot run img2img; inpainting all of the image is the same operation for it.
        inputs.mode = "inpaint"
        inputs.mask = Image.new("L", resolved.image.size, 255)
        inputs.notes.append("inpainting checkpoint: the edit ran as an inpaint of the whole image")
    await add_references(ctx, request, family, inputs)
    return inputs


# Most specific first: a sweep's base types subclass these.
PREPARE: tuple[tuple[type[GenerationParams], str, Prepare], ...] = (
    (InpaintRequest, "inpaint", prepare_inpaint_with_references),
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
    refs += [(ref.image, f"reference_images[{i}].image", "RGB") for i, ref in enumerate(getattr(request, "reference_images", []))]
    if isinstance(request, InpaintRequest) and request.mask is not None:
        refs.append((request.mask, "mask", "L"))
    return refs
