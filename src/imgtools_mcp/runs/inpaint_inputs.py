"""What inpaint adds to the shared parameters: the canvas (grown for outpainting), the mask, and the working area."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps

from ..engine.families import FamilyInfo
from ..images import masks
from ..params import InpaintRequest
from .context import RunContext, RunInputError
from .inputs import ImageInputs, InputRecord, area_size, size_for


@dataclass
class MaskPlan:
    """The canvas to paint on and its binary mask (white = repaint), plus how they were made."""

    canvas: Image.Image
    mask: Image.Image
    description: dict[str, Any]
    notes: list[str]


async def _mask_plan(ctx: RunContext, request: InpaintRequest, image: Image.Image, seed: int) -> MaskPlan:
    notes: list[str] = []
    recorded: dict[str, Any] = {}
    if request.expand is not None:
        if request.invert_mask:
            raise RunInputError("invert_mask: cannot be used with expand (the new border is what gets painted)")
        amounts = request.expand.as_dict()
        canvas_size = (image.width + amounts["left"] + amounts["right"], image.height + amounts["top"] + amounts["bottom"])
        limit = ctx.settings.max_pixels * 4
        if canvas_size[0] * canvas_size[1] > limit:
            raise RunInputError(
                f"expand: the canvas would be {canvas_size[0]}x{canvas_size[1]}, over the {limit} pixel limit "
                f"(4 x IMGTOOLS_MAX_PIXELS); expand less"
            )
        canvas, mask = masks.expand_canvas(image, **amounts, seed=seed)
        recorded = {"source": "expand", "expand": amounts}
        describe = {"expand": amounts}
    elif request.mask_prompt is not None:
        from .structure import mask_from_prompt  # the VLM finds the region; the mask is saved as an output

        mask, recorded = await mask_from_prompt(ctx, image, request.mask_prompt)
        canvas = image
        describe = {"mask_reference": f"mask_prompt {request.mask_prompt!r} ({recorded['mask_id']})"}
        how = "cut to silhouettes by " + recorded["method"].removeprefix("segmenter:") if recorded["method"] != "boxes" else "boxes"
        extra = f" ({recorded['method_note']})" if recorded["method_note"] else ""
        notes.append(
            f"mask_prompt: the VLM found {len(recorded['boxes'])} region(s), masked as {how}{extra}; "
            f"the mask is output {recorded['mask_id']}"
        )
    elif request.mask_shapes is not None:
        try:
            mask = masks.mask_from_shapes(image.size, request.mask_shapes)
        except ValueError as exc:
            raise RunInputError(str(exc)) from exc
        canvas = image
        recorded = {"source": "mask_shapes", "shapes": [shape.model_dump() for shape in request.mask_shapes]}
        describe = {"shapes": request.mask_shapes}
    else:
        assert request.mask is not None
        resolved = await ctx.resolver.resolve(request.mask, param="mask", mode="L")
        mask_record = InputRecord.of(resolved)
        mask, resized = masks.fit_mask(resolved.image, image.size)
        if resized:
            notes.append(
                f"mask resized from {resolved.image.width}x{resolved.image.height} to the image's {image.width}x{image.height}"
            )
        canvas = image
        recorded = {"source": "mask", "reference": mask_record.reference, "sha256": mask_record.sha256}
        if resized:
            recorded["resized_from"] = list(resolved.image.size)
        describe = {"mask_reference": mask_record.reference, "resized_from": resolved.image.size if resized else None}
    if request.invert_mask:
        mask = ImageOps.invert(mask)
    if masks.mask_coverage(mask) == 0:
        which = "invert_mask" if request.invert_mask else next(
            name for name in ("mask", "mask_prompt", "mask_shapes") if getattr(request, name) is not None
        )
        raise RunInputError(f"{which}: the mask marks nothing to repaint (white = repaint, black = keep)")
    text = masks.describe_mask(
        **describe,
        blur=request.mask_blur,
        invert=request.invert_mask,
        inpaint_area=request.inpaint_area,
        padding=request.padding,
    )
    recorded.update(
        description=text,
        blur=request.mask_blur,
        invert=request.invert_mask,
        inpaint_area=request.inpaint_area,
        padding=request.padding,
        coverage=round(masks.mask_coverage(mask), 4),
    )
    return MaskPlan(canvas, mask, recorded, notes)


async def prepare_inpaint(ctx: RunContext, request: InpaintRequest, family: FamilyInfo) -> ImageInputs:
    """Image, mask and working area for the engine (a sweep prepares each cell; its resolver remembers the images)."""
    resolved = await ctx.resolver.resolve(request.image, param="image")
    record = InputRecord.of(resolved)
    # The outpainting fill is part of the input: derive its noise from the image so reruns match.
    plan = await _mask_plan(ctx, request, resolved.image, seed=int(record.sha256[:8], 16))
    canvas, blurred = plan.canvas, masks.blur_mask(plan.mask, request.mask_blur)
    notes = list(plan.notes)
    if request.inpaint_area == "full":
        size, note = size_for(
            canvas.size, ctx.settings.max_pixels, width=request.width, height=request.height,
            multiple=family.family.size_multiple,
        )
        if note:
            notes.append(note)
        image, mask = canvas, blurred

        def postprocess(generated: Image.Image) -> Image.Image:
            return masks.composite(canvas, generated, blurred)
    else:
        native_pixels = min(family.native_size**2, ctx.settings.max_pixels)
        preferred = (request.width, request.height) if request.width and request.height else None
        try:
            box = masks.masked_crop_box(
                plan.mask, request.padding, canvas.size, working_size=preferred or (1, 1),
                target_multiple=family.family.size_multiple,
            )
        except ValueError as exc:
            raise RunInputError(f"mask: {exc}") from exc
        box_size = (box[2] - box[0], box[3] - box[1])
        size = area_size(box_size, native_pixels, width=request.width, height=request.height, multiple=family.family.size_multiple)
        image, mask = canvas.crop(box), blurred.crop(box)
        notes.append(f"inpainted the {box_size[0]}x{box_size[1]} area at {box[0]},{box[1]} at {size[0]}x{size[1]}")
        plan.description["crop_box"] = list(box)

        def postprocess(generated: Image.Image) -> Image.Image:
            return masks.paste_back(canvas, generated, box, blurred)

    infotext = {
        **record.infotext(),
        "Mask": plan.description["description"],
        "Mask blur": f"{request.mask_blur:g}",
        "Mask mode": "Inpaint not masked" if request.invert_mask else None,
        "Inpaint area": "Only masked" if request.inpaint_area == "masked" else None,
        "Masked area padding": request.padding if request.inpaint_area == "masked" else None,
        "Mask method": plan.description.get("method"),  # mask_prompt's: boxes or segmenter:<model>
    }
    parameters = {
        "image": record.reference,
        "mask": plan.description.get("reference"),
        "mask_shapes": plan.description.get("shapes"),
        "mask_prompt": plan.description.get("mask_prompt"),
        "mask_made": plan.description.get("mask_id"),  # the mask the VLM's boxes made, an output id
        "mask_method": plan.description.get("method"),  # mask_prompt's: "boxes" or "segmenter:<model>"
        "expand": plan.description.get("expand"),
        "mask_blur": request.mask_blur,
        "invert_mask": request.invert_mask,
        "inpaint_area": request.inpaint_area,
        "padding": request.padding,
    }
    return ImageInputs(
        mode="inpaint",
        image=image,
        mask=mask,
        strength=request.strength,
        default_size=size,
        infotext=infotext,
        metadata={**record.metadata(), "mask": plan.description, "canvas": list(canvas.size)},
        postprocess=postprocess,
        notes=notes,
        parameters=parameters,
    )
