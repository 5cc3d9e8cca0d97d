"""A tiny random-weight ESRGAN (RRDBNet, Real-ESRGAN's key layout) written as .pth or .safetensors, for offline tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class _DenseBlock(nn.Module):
    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        for index in range(1, 6):
            out = features if index == 5 else growth
            setattr(self, f"conv{index}", nn.Conv2d(features + (index - 1) * growth, out, 3, 1, 1))


class _RRDB(nn.Module):
    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = (_DenseBlock(features, growth) for _ in range(3))


class TinyRRDBNet(nn.Module):
    """Only the parameters of Real-ESRGAN's RRDBNet (x4: plain RGB in; spandrel reads growth 32 only); spandrel runs it."""

    def __init__(self, features: int = 16, growth: int = 32, blocks: int = 1) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(3, features, 3, 1, 1)
        self.body = nn.Sequential(*(_RRDB(features, growth) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_hr = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_last = nn.Conv2d(features, 3, 3, 1, 1)


def make_test_upscaler(path: Path, *, features: int = 16, growth: int = 32, blocks: int = 1, seed: int = 0) -> Path:
    """Write a random 4x RRDBNet whose output follows its input (mid-grey plus detail), not a black or flat image.

    Random weights alone send most outputs below 0 (clamped to black), which would make tile-seam
    tests pass for any blending. The last layer's bias is set to mid-grey and its weights scaled up,
    so the output varies with the input around 0.5.
    """
    torch.manual_seed(seed)
    model = TinyRRDBNet(features, growth, blocks)
    with torch.no_grad():
        model.conv_last.weight.mul_(10.0)
        model.conv_last.bias.fill_(0.5)
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        # Real-ESRGAN's own files keep the weights under "params_ema"; spandrel unwraps that as it does for theirs.
        torch.save({"params_ema": state}, str(path))
    return path
