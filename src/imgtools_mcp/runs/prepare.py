"""What generate and edit add to the shared parameters, and which preparation each request type gets."""

from __future__ import annotations

from PIL import Image

from ..engine.families import FamilyInfo
from ..params import EditRequest, GenerateRequest, GenerationParams, InpaintRequest
from .context import RunContext
from .image_run import Prepare
from .inpaint_inputs import prepare_inpaint
from .inputs import ImageInputs, InputRecord, size_for


async def prepare_generate(ctx: RunContext, request: GenerationParams, family: FamilyInfo) -> ImageInputs:
    """Nothing but the mode: text to image."""
    return ImageInputs(mode="txt2img")


async def prepare_edit(ctx: RunContext, request: EditRequest, family: FamilyInfo) -> ImageInputs:
    """The input image resolved and sized for img2img."""
    resolved = await ctx.resolver.resolve(request.image, param="image")
    record = InputRecord.of(resolved)
    size, note = size_for(resolved.image.size, ctx.settings.max_pixels, width=request.width, height=request.height)
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
    if isinstance(request, InpaintRequest) and request.mask is not None:
        refs.append((request.mask, "mask", "L"))
    return refs
