"""Shared tiny parts of the flow-matching test pipelines (SD3, FLUX.1, Chroma): tokenizers, text encoders, a VAE."""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import torch

CLIP_HIDDEN = 32
T5_HIDDEN = 32


def t5_tokenizer():
    """A T5 (Unigram) tokenizer over letters, digits and punctuation, with and without the word-start mark."""
    from transformers import T5Tokenizer

    symbols = string.ascii_lowercase + string.digits + string.punctuation
    # Word-initial pieces score higher, so "a red barn" splits into about one piece per letter, as T5 would.
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + c, -1.0) for c in symbols] + [(c, -1.5) for c in symbols + string.ascii_uppercase]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def clip_tokenizer():
    """The byte-level CLIP tokenizer the tiny SD models use, written and read back (CLIPTokenizer reads files)."""
    from transformers import CLIPTokenizer

    from .tiny_sd import write_clip_tokenizer

    with tempfile.TemporaryDirectory() as folder:
        write_clip_tokenizer(Path(folder))
        return CLIPTokenizer.from_pretrained(folder)


def t5_encoder(vocab_size: int, hidden: int = T5_HIDDEN):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size, d_model=hidden, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def clip_encoder(tokenizer, *, with_projection: bool = False, projection_dim: int = CLIP_HIDDEN):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vocab_size = len(tokenizer)
    config = CLIPTextConfig(
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
        hidden_size=CLIP_HIDDEN, intermediate_size=37, layer_norm_eps=1e-5, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=vocab_size, projection_dim=projection_dim, hidden_act="gelu",
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


def flow_vae(latent_channels: int = 4):
    """An 8x VAE (four blocks, as the real ones: the pipelines' size multiple stays the real 16) with few channels.

    Like a trained encoder, its posterior is nearly a point and its latents come out centred at unit
    variance (shift and scaling factors), so img2img and inpainting keep what the input shows.
    """
    import numpy as np
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels, norm_num_groups=4, sample_size=64,
        use_quant_conv=False, use_post_quant_conv=False,
    )
    with torch.no_grad():
        # The encoder's last conv gives (mean, logvar); pin logvar at the distribution's floor.
        vae.encoder.conv_out.weight[latent_channels:] = 0.0
        vae.encoder.conv_out.bias[latent_channels:] = -30.0
        ramp = np.linspace(-1.0, 1.0, 64, dtype=np.float32)
        probe = torch.from_numpy(np.stack([ramp[None, :].repeat(64, 0), ramp[:, None].repeat(64, 1), np.zeros((64, 64), np.float32)]))
        mean = vae.encode(probe[None]).latent_dist.mean
    vae.register_to_config(shift_factor=round(float(mean.mean()), 5), scaling_factor=round(1.0 / float(mean.std()), 5))
    return vae


def flow_scheduler(*, dynamic: bool, shift: float = 3.0):
    """FLUX.1 dev's schedule (resolution-dependent shift) or a fixed shift (SD3: 3.0, schnell: 1.0)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if dynamic:
        return FlowMatchEulerDiscreteScheduler(
            base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, shift=shift,
            use_dynamic_shifting=True,
        )
    return FlowMatchEulerDiscreteScheduler(shift=shift)
