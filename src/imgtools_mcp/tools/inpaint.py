"""The `inpaint` tool: repaint a masked part of an image (mask image, shapes, or an expanded border) and keep the rest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, ToolAnnotations
from PIL import Image, ImageOps

from ..app import AppContext
from ..images import masks
from ..params import InpaintRequest
from .common import bind_tool
from .generation import ImageInputs, run_image_tool
from .inputs import InputRecord, area_size, size_for

DESCRIPTION = """Repaint part of an image, keeping every other pixel exactly, or outpaint (grow the canvas, paint the new border).
Say where with exactly one of:
- `mask_shapes` (easiest): rects/ellipses, fractions of the image when x, y, width, height are all <= 1, else
  pixels; e.g. [{"type": "ellipse", "x": 0.3, "y": 0.1, "width": 0.4, "height": 0.4}] for the upper middle.
- `mask`: a mask image reference (white = repaint, black = keep).
- `expand`: {left, right, top, bottom} pixels to add; the output is that much larger.
The prompt says what should appear there (for expand: the whole scene).
`image`: an output id or imgtools://images/<id> (chain results), a path under the input roots, base64/data: URL, or http(s) URL.
`inpaint_area: "masked"` works on a crop around the mask: more detail for small areas.
Output keeps the image's size (plus expand); costs like generate. For the whole image use edit."""


@dataclass
class MaskPlan:
    """The canvas to paint on and its binary mask (white = repaint), plus how they were made."""

    canvas: Image.Image
    mask: Image.Image
    description: dict[str, Any]
    notes: list[str]


async def _mask_plan(app: AppContext, request: InpaintRequest, image: Image.Image, seed: int) -> MaskPlan:
    notes: list[str] = []
    recorded: dict[str, Any] = {}
    if request.expand is not None:
        if request.invert_mask:
            raise ToolError("invert_mask: cannot be used with expand (the new border is what gets painted)")
        amounts = request.expand.as_dict()
        canvas_size = (image.width + amounts["left"] + amounts["right"], image.height + amounts["top"] + amounts["bottom"])
        limit = app.settings.max_pixels * 4
        if canvas_size[0] * canvas_size[1] > limit:
            raise ToolError(
                f"expand: the canvas would be {canvas_size[0]}x{canvas_size[1]}, over the {limit} pixel limit "
                f"(4 x IMGTOOLS_MAX_PIXELS); expand less"
            )
        canvas, mask = masks.expand_canvas(image, **amounts, seed=seed)
        recorded = {"source": "expand", "expand": amounts}
        describe = {"expand": amounts}
    elif request.mask_shapes is not None:
        try:
            mask = masks.mask_from_shapes(image.size, request.mask_shapes)
        except ValueError as exc:
            raise ToolError(str(exc)) from exc
        canvas = image
        recorded = {"source": "mask_shapes", "shapes": [shape.model_dump() for shape in request.mask_shapes]}
        describe = {"shapes": request.mask_shapes}
    else:
        assert request.mask is not None
        resolved = await app.resolver.resolve(request.mask, param="mask", mode="L")
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
        which = "invert_mask" if request.invert_mask else ("mask" if request.mask is not None else "mask_shapes")
        raise ToolError(f"{which}: the mask marks nothing to repaint (white = repaint, black = keep)")
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


async def prepare_inputs(app: AppContext, request: InpaintRequest) -> ImageInputs:
    """Image, mask and working area for the engine (sweep calls this once per cell; its resolver remembers the images)."""
    resolved = await app.resolver.resolve(request.image, param="image")
    _, family = await app.engine.aresolve(request.model)
    record = InputRecord.of(resolved)
    # The outpainting fill is part of the input: derive its noise from the image so reruns match.
    plan = await _mask_plan(app, request, resolved.image, seed=int(record.sha256[:8], 16))
    canvas, blurred = plan.canvas, masks.blur_mask(plan.mask, request.mask_blur)
    notes = list(plan.notes)
    if request.inpaint_area == "full":
        size, note = size_for(canvas.size, app.settings.max_pixels, width=request.width, height=request.height)
        if note:
            notes.append(note)
        image, mask = canvas, blurred

        def postprocess(generated: Image.Image) -> Image.Image:
            return masks.composite(canvas, generated, blurred)
    else:
        native_pixels = min(family.native_size**2, app.settings.max_pixels)
        preferred = (request.width, request.height) if request.width and request.height else None
        try:
            box = masks.masked_crop_box(plan.mask, request.padding, canvas.size, working_size=preferred or (1, 1))
        except ValueError as exc:
            raise ToolError(f"mask: {exc}") from exc
        box_size = (box[2] - box[0], box[3] - box[1])
        size = area_size(box_size, native_pixels, width=request.width, height=request.height)
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
    }
    parameters = {
        "image": record.reference,
        "mask": plan.description.get("reference"),
        "mask_shapes": plan.description.get("shapes"),
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


async def handle(request: InpaintRequest, ctx: Context) -> CallToolResult:
    return await run_image_tool(ctx, "inpaint", request, lambda app: prepare_inputs(app, request))


def register(server: MCPServer) -> None:
    bind_tool(
        server,
        InpaintRequest,
        handle,
        name="inpaint",
        title="Inpaint / outpaint image",
        description=DESCRIPTION,
        annotations=ToolAnnotations(
            title="Inpaint / outpaint image",
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=True,
        ),
    )
