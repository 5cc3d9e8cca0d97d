"""Pipelines built on a loaded one (other modes, ControlNet) that share its modules without changing them."""

from __future__ import annotations

from typing import Any


def from_pipe_keeping_dtypes(cls: Any, base: Any, dtype: Any = None, **components: Any) -> Any:
    """`cls.from_pipe(base, ...)` without its side effect on the shared weights.

    diffusers' from_pipe casts every module of the new pipeline to its `dtype` argument, float32 when none is
    given, and those modules are the loaded model's own: a bf16 model would silently become float32 (twice the
    memory, and other numbers for the next plain request), a VAE kept in float32 beside an fp16 UNet would be
    cast too, and so would the float32 buffers inside a bf16 module (a Qwen text encoder's rotary frequencies, which
    rounded to bf16 change every prompt's embedding from then on). Each tensor that from_pipe cast is put back: the
    original itself, not a cast back, so nothing is rounded. `dtype` (the denoiser's when not given) is what from_pipe
    casts to, so only the tensors in another dtype are copied while it runs.
    """
    import torch

    def tensors(modules: dict[str, Any]) -> dict[tuple[int, str, str], Any]:
        held = {}
        for module in modules.values():
            if isinstance(module, torch.nn.Module):
                for sub in module.modules():
                    for kind in ("_parameters", "_buffers"):
                        for name, tensor in getattr(sub, kind).items():
                            if tensor is not None:
                                held[(id(sub), kind, name)] = (sub, tensor.data if kind == "_parameters" else tensor)
        return held

    before = tensors({**base.components, **components})
    if dtype is None:
        denoiser = base.components.get("unet") or base.components.get("transformer")
        dtype = getattr(denoiser, "dtype", None)
    pipe = cls.from_pipe(base, dtype=dtype, **components)
    for (_, kind, name), (sub, original) in before.items():
        current = getattr(sub, kind).get(name)
        if current is None or current.dtype == original.dtype:
            continue
        if kind == "_parameters":
            current.data = original
        else:
            sub._buffers[name] = original
    return pipe
