"""Which ControlNets serve each family: default weights per control type, the family's union ControlNet and its
control modes, and the diffusers classes that run them. The tool error for an unsupported family x type is built
from this table, so the pairs it names are the ones that run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MODE_LABELS = {"txt2img": "generate", "img2img": "edit", "inpaint": "inpaint"}


@dataclass(frozen=True)
class FamilyControlNets:
    pipelines: dict[str, str]  # request mode -> diffusers ControlNet pipeline class
    net: str  # the ControlNet class
    multi: str | None  # the class holding several ControlNets; None: one ControlNet per request (max_controls 1)
    dedicated: dict[str, str] = field(default_factory=dict)  # control type -> default hub id of a one-type ControlNet
    union: str | None = None  # default hub id of the family's union ControlNet
    # control type -> the union's control_mode; None: the union takes no mode (it reads the kind from the map).
    union_modes: dict[str, int | None] = field(default_factory=dict)
    union_net: str | None = None  # the union's class when it is not `net` (SDXL: ControlNetUnionModel)
    union_multi: str | None = None
    union_pipelines: dict[str, str] | None = None  # when union ControlNets run in other pipelines (SDXL)
    windows: bool = True  # the pipelines take control_guidance_start/end
    max_controls: int | None = None  # entries per request when the pipelines take one ControlNet only (Z-Image)
    # The pipelines VAE-encode the map by sampling with the request's generators before they draw the starting noise
    # (FLUX.1, Qwen-Image): the noise is drawn first, so one seed starts from the same noise with control or without.
    noise_first: bool = False
    # hub id -> the one weights file of a ControlNet published as a single file (no diffusers config in the repo)
    single_files: dict[str, str] = field(default_factory=dict)
    map_kwarg_txt2img: str = "control_image"  # SD 1.x/2.x/SDXL text-to-image take the map as `image`

    def types(self) -> list[str]:
        return list(dict.fromkeys([*self.dedicated, *self.union_modes]))

    def union_only(self, kind: str) -> bool:
        return kind not in self.dedicated and kind in self.union_modes


_SD_PIPELINES = {
    "txt2img": "StableDiffusionControlNetPipeline",
    "img2img": "StableDiffusionControlNetImg2ImgPipeline",
    "inpaint": "StableDiffusionControlNetInpaintPipeline",
}

CONTROLNETS: dict[str, FamilyControlNets] = {
    "sd1": FamilyControlNets(
        _SD_PIPELINES, "ControlNetModel", "MultiControlNetModel",
        dedicated={
            "canny": "lllyasviel/control_v11p_sd15_canny",
            "depth": "lllyasviel/control_v11f1p_sd15_depth",
            "pose": "lllyasviel/control_v11p_sd15_openpose",
            "lineart": "lllyasviel/control_v11p_sd15_lineart",
            "scribble": "lllyasviel/control_v11p_sd15_scribble",
            "tile": "lllyasviel/control_v11f1e_sd15_tile",
        },
        map_kwarg_txt2img="image",
    ),
    "sdxl": FamilyControlNets(
        {
            "txt2img": "StableDiffusionXLControlNetPipeline",
            "img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
            "inpaint": "StableDiffusionXLControlNetInpaintPipeline",
        },
        "ControlNetModel", "MultiControlNetModel",
        dedicated={
            "canny": "diffusers/controlnet-canny-sdxl-1.0",
            "depth": "diffusers/controlnet-depth-sdxl-1.0",
            "pose": "thibaud/controlnet-openpose-sdxl-1.0",
            "scribble": "xinsir/controlnet-scribble-sdxl-1.0",
            "tile": "xinsir/controlnet-tile-sdxl-1.0",
        },
        # xinsir's ControlNet++ modes: 0 openpose, 1 depth, 2 hed/pidi/scribble/ted, 3 canny/lineart/mlsd,
        # 4 normal, 5 segment, 6 tile and 7 repaint (6 and 7 in the ProMax weights only).
        union="xinsir/controlnet-union-sdxl-1.0",
        union_modes={"pose": 0, "depth": 1, "scribble": 2, "canny": 3, "lineart": 3, "tile": 6},
        union_net="ControlNetUnionModel", union_multi="MultiControlNetUnionModel",
        union_pipelines={
            "txt2img": "StableDiffusionXLControlNetUnionPipeline",
            "img2img": "StableDiffusionXLControlNetUnionImg2ImgPipeline",
            "inpaint": "StableDiffusionXLControlNetUnionInpaintPipeline",
        },
        map_kwarg_txt2img="image",
    ),
    "flux": FamilyControlNets(
        {"txt2img": "FluxControlNetPipeline", "img2img": "FluxControlNetImg2ImgPipeline", "inpaint": "FluxControlNetInpaintPipeline"},
        "FluxControlNetModel", "FluxMultiControlNetModel",
        dedicated={"canny": "InstantX/FLUX.1-dev-Controlnet-Canny", "depth": "Shakker-Labs/FLUX.1-dev-ControlNet-Depth"},
        # Union-Pro modes: 0 canny, 1 tile, 2 depth, 3 blur, 4 pose, 5 gray, 6 low quality.
        union="Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro",
        union_modes={"canny": 0, "tile": 1, "depth": 2, "pose": 4},
        noise_first=True,
    ),
    # diffusers' SD3 ControlNet pipelines: text-to-image, and an inpainting one made for inpainting ControlNets only.
    "sd3": FamilyControlNets(
        {"txt2img": "StableDiffusion3ControlNetPipeline"}, "SD3ControlNetModel", "SD3MultiControlNetModel",
        dedicated={
            "canny": "stabilityai/stable-diffusion-3.5-large-controlnet-canny",
            "depth": "stabilityai/stable-diffusion-3.5-large-controlnet-depth",
            "tile": "stabilityai/stable-diffusion-3.5-large-controlnet-blur",
        },
    ),
    # InstantX's union reads the kind from the map (no control mode): canny, soft edge (lineart here), depth and pose.
    # diffusers' Qwen-Image ControlNet inpaint pipeline is for InstantX's inpainting ControlNet, not this union.
    "qwen-image": FamilyControlNets(
        {"txt2img": "QwenImageControlNetPipeline"}, "QwenImageControlNetModel", "QwenImageMultiControlNetModel",
        union="InstantX/Qwen-Image-ControlNet-Union",
        union_modes={"canny": None, "lineart": None, "depth": None, "pose": None},
        noise_first=True,
    ),
    # alibaba-pai's Fun union for Z-Image-Turbo (canny, HED soft edge as lineart here, depth, pose; no mode): one
    # ControlNet per request, acting on every step, published as one weights file.
    "z-image": FamilyControlNets(
        {"txt2img": "ZImageControlNetPipeline"}, "ZImageControlNetModel", None,
        union="alibaba-pai/Z-Image-Turbo-Fun-Controlnet-Union",
        union_modes={"canny": None, "lineart": None, "depth": None, "pose": None},
        windows=False, max_controls=1,
        single_files={"alibaba-pai/Z-Image-Turbo-Fun-Controlnet-Union": "Z-Image-Turbo-Fun-Controlnet-Union.safetensors"},
    ),
}
# SD 2.x runs ControlNets made for it (its text encoder differs from SD 1.5's), so it has no defaults.
CONTROLNETS["sd2"] = FamilyControlNets(_SD_PIPELINES, "ControlNetModel", "MultiControlNetModel", map_kwarg_txt2img="image")


def supported_pairs() -> list[str]:
    """family: types (modes), as the tool error names them."""
    pairs = []
    for family_id, table in CONTROLNETS.items():
        types = [kind if not table.union_only(kind) else f"{kind} (union)" for kind in table.types()]
        modes = "" if len(table.pipelines) == 3 else f" on {'/'.join(MODE_LABELS[m] for m in table.pipelines)} only"
        one = f", {table.max_controls} entry" if table.max_controls else ""
        pairs.append(f"{family_id}: {', '.join([*types, 'image (with model)'])}{modes}{one}")
    return pairs
