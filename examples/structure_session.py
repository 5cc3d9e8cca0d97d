"""What an assistant does with structure and finishing: keep a pose with `control`, restyle from a reference
image, repaint "the cup" by `mask_prompt`, and upscale the result 4x.

Run it against your own server configuration (it starts the server over stdio, as a host would):

    python examples/structure_session.py --model stable-diffusion-v1-5/stable-diffusion-v1-5

It needs a VLM for mask_prompt (OPENROUTER_API_KEY, or IMGTOOLS_VLM_BASE_URL for a local one), an OpenPose
ControlNet for the model's family (the default is fetched from the hub once, or found in IMGTOOLS_CONTROLNET_DIRS)
and, on SD 1.x/SDXL/FLUX.1, the family's IP-Adapter for the reference image (found like a LoRA, or fetched once).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys

import anyio
from mcp import Client, StdioServerParameters
from PIL import Image, ImageDraw

# OpenPose's limb colours, so the map reads as the skeletons an OpenPose ControlNet was trained on.
LIMBS = [((0.5, 0.15), (0.5, 0.3), (255, 0, 0)), ((0.5, 0.3), (0.35, 0.45), (255, 85, 0)), ((0.35, 0.45), (0.3, 0.6), (255, 170, 0)),
         ((0.5, 0.3), (0.65, 0.45), (85, 255, 0)), ((0.65, 0.45), (0.72, 0.6), (0, 255, 0)), ((0.5, 0.3), (0.45, 0.6), (0, 255, 85)),
         ((0.45, 0.6), (0.42, 0.85), (0, 255, 255)), ((0.5, 0.3), (0.56, 0.6), (0, 85, 255)), ((0.56, 0.6), (0.6, 0.85), (0, 0, 255))]


def style_image(size: int) -> str:
    """A reference whose look (warm diagonal bands) the restyled image should take on."""
    image = Image.new("RGB", (size, size), (250, 220, 160))
    draw = ImageDraw.Draw(image)
    for offset in range(-size, size, max(4, size // 8)):
        draw.line((offset, 0, offset + size, size), fill=(200, 60, 40), width=max(2, size // 32))
    return png_data_url(image)


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def pose_map(size: int) -> str:
    """A standing figure, arms out, drawn as an OpenPose skeleton: the pose an assistant wants to keep."""
    image = Image.new("RGB", (size, size), "black")
    draw = ImageDraw.Draw(image)
    for (x1, y1), (x2, y2), colour in LIMBS:
        draw.line((x1 * size, y1 * size, x2 * size, y2 * size), fill=colour, width=max(2, size // 64))
    return png_data_url(image)


async def call(client: Client, tool: str, arguments: dict) -> dict:
    shown = {k: (v[:40] + "..." if isinstance(v, str) and len(v) > 60 else v) for k, v in arguments.items()}
    print(f"> {tool} {shown}")
    result = await client.call_tool(tool, arguments)
    print(f"< {result.content[0].text}")
    if result.is_error:
        raise SystemExit(f"{tool} failed")
    return result.structured_content


async def session(model: str | None, size: int, steps: int, pose_controlnet: str, upscaler: str | None) -> None:
    env = dict(os.environ)
    if model:
        env["IMGTOOLS_MODEL"] = model
    server = StdioServerParameters(command=sys.executable, args=["-m", "imgtools_mcp.cli", "serve"], env=env)
    async with Client(server) as client:
        small = {"width": size, "height": size, "steps": steps, "seed": 7}
        # "Same pose, different person": the skeleton is a ready-made map, so its type is `image`, with its ControlNet.
        pose = {"type": "image", "image": pose_map(size), "model": pose_controlnet, "weight": 1.0}
        for person in ("an astronaut", "a ballet dancer"):
            made = await call(client, "generate", {"prompt": f"{person} holding a cup, full body", "control": [pose], **small})
        image_id = made["images"][0]["id"]
        # "In the style of this image": one parameter; the family decides how (IP-Adapter here, native inputs on
        # multi-reference models), and the result says which.
        styled = await call(client, "edit", {"image": image_id, "prompt": "a ballet dancer holding a cup, full body",
                                             "reference_images": [{"image": style_image(size), "weight": 0.8}],
                                             "strength": 0.6, "steps": steps, "seed": 7})
        print(f"  reference through: {styled['parameters']['reference_mechanism']}")
        image_id = styled["images"][0]["id"]
        # It cannot draw a mask: it names what to repaint, the VLM finds it, and the mask comes back as an output.
        repainted = await call(client, "inpaint", {"image": image_id, "prompt": "a steaming red mug", "mask_prompt": "the cup",
                                                   "steps": steps, "seed": 7})
        print(f"  mask used: imgtools://images/{repainted['parameters']['mask_made']}")
        upscale = {"image": repainted["images"][0]["uri"], "scale": 4}
        if upscaler:
            upscale["model"] = upscaler
        final = await call(client, "upscale", upscale)
        print(f"  final: {final['images'][0]['width']}x{final['images'][0]['height']} {final['images'][0]['uri']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model for this session (default: IMGTOOLS_MODEL)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pose-controlnet", default="lllyasviel/control_v11p_sd15_openpose")
    parser.add_argument("--upscaler", help="upscaler weights, e.g. a 4x-UltraSharp file in IMGTOOLS_UPSCALER_DIRS (default Lanczos)")
    args = parser.parse_args()
    anyio.run(session, args.model, args.size, args.steps, args.pose_controlnet, args.upscaler)


if __name__ == "__main__":
    main()
