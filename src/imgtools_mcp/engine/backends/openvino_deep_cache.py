"""DeepCache on OpenVINO UNets: the full IR also returns its deep feature, a shallow IR reuses it.

engine/step_cache.py's DeepCache hooks the torch UNet's blocks, which a compiled graph does not have. Here the
same split is made at conversion instead: the UNet's IR has a second output, `deep` (what up_blocks[-2] hands
the last up block), and a second, small IR computes only the shallow path (time embedding, conv_in,
down_blocks[0], up_blocks[-1] on a given `deep`, conv_out). On a reused step the shallow IR runs with the deep
feature of the last full step, which is exactly what the torch hooks compute (tests/test_step_cache_openvino.py
checks both against each other). The shallow path holds a few percent of SD 1.5's weights.
"""

from __future__ import annotations

from typing import Any

import torch


def has_deep_split(unet: Any) -> bool:
    """Whether the UNet has levels below the shallow one (else there is nothing to reuse)."""
    return len(getattr(unet, "down_blocks", ())) >= 2 and len(getattr(unet, "up_blocks", ())) >= 2


class DeepFeature:
    """Catches up_blocks[-2]'s output during one traced forward (a forward hook; tracing records the tensor)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self.unet = unet

    def __enter__(self) -> "DeepFeature":
        self.handle = self.unet.up_blocks[-2].register_forward_hook(self._caught)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.handle.remove()

    def _caught(self, module: Any, args: Any, output: torch.Tensor) -> None:
        self.value = output


class ShallowUNet(torch.nn.Module):
    """The UNet's outermost level only, on a deep feature from an earlier full pass; fp32 at the graph's edges.

    Mirrors UNet2DConditionModel.forward for a plain call (no class labels, ControlNet residuals or adapters;
    the OpenVINO stand-in sends those calls to torch): the last up block takes the first len(resnets) skip
    features (conv_in's and down_blocks[0]'s), the ones the full pass would hand it.
    """

    def __init__(self, unet: torch.nn.Module, *, sdxl: bool) -> None:
        super().__init__()
        self.unet = unet
        self.sdxl = sdxl

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        deep: torch.Tensor,
        text_embeds: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        unet = self.unet
        dtype = unet.dtype
        sample, states, deep = sample.to(dtype), encoder_hidden_states.to(dtype), deep.to(dtype)
        added = None
        if self.sdxl:
            assert text_embeds is not None and time_ids is not None
            added = {"text_embeds": text_embeds.to(dtype), "time_ids": time_ids.to(dtype)}
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
        aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=states, added_cond_kwargs=added or {})
        emb = emb + aug if aug is not None else emb
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        states = unet.process_encoder_hidden_states(encoder_hidden_states=states, added_cond_kwargs=added or {})
        hidden = unet.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (hidden,)
        first = unet.down_blocks[0]
        if getattr(first, "has_cross_attention", False):
            _, res = first(hidden_states=hidden, temb=emb, encoder_hidden_states=states)
        else:
            _, res = first(hidden_states=hidden, temb=emb)
        skips += res
        last = unet.up_blocks[-1]
        res = skips[: len(last.resnets)]
        if getattr(last, "has_cross_attention", False):
            hidden = last(hidden_states=deep, temb=emb, res_hidden_states_tuple=res, encoder_hidden_states=states)
        else:
            hidden = last(hidden_states=deep, temb=emb, res_hidden_states_tuple=res)
        if unet.conv_norm_out is not None:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        return unet.conv_out(hidden).float()

