"""Small tokenizers and chat templates built locally, for the tiny Qwen/Mistral-conditioned test pipelines."""

from __future__ import annotations

import json
from typing import Any

# The words the tiny tokenizer learns merges from: the pipelines' own system prompts and some ordinary
# prompt text, so token counts stay in the same range as a real tokenizer's (a byte per token would not).
_CORPUS = [
    "Describe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships "
    "of the objects and background:",
    "Describe the key features of the input image (color, shape, size, texture, objects, background), then "
    "explain how the user's text instruction should alter or modify the image. Generate a new image that meets "
    "the user's requirements while maintaining consistency with the original input where appropriate.",
    "You are an AI that reasons about image descriptions. You give structured responses focusing on object "
    "relationships, object attribution and actions without speculation.",
    "Picture 1: Picture 2: Picture 3: system user assistant",
    "a photo of a cat sitting on a red chair in a sunny garden, high quality, detailed, make the sky purple, "
    "a dog is dancing, dance monkey, bad quality, blurry, low resolution, watermark, painting of a lighthouse "
    "at dusk, turn it into winter, add a hat, remove the person, portrait, landscape, city street at night",
]

# Qwen2/Qwen2.5-VL/Qwen3 special tokens, in the order the real vocabularies list them (ids follow the learned ones).
QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<think>", "</think>",
]

# Qwen3's template reduced to what the pipelines use: user/system turns, a generation prompt, and an empty
# thinking block when thinking is switched off (Z-Image asks for thinking on, FLUX.2 klein off).
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)

# Mistral Small 3.x's template for messages whose content is a list of {type: text} parts (FLUX.2 dev's format).
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- set text = message['content'] if message['content'] is string else "
    "(message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('')) -%}"
    "{%- if message['role'] == 'system' -%}{{- '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' -}}"
    "{%- elif message['role'] == 'user' -%}{{- '[INST]' + text + '[/INST]' -}}"
    "{%- else -%}{{- text + eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
)


def _learned_bpe(vocab_size: int, specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary learned from the small corpus above (deterministic, milliseconds)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    state: dict[str, Any] = json.loads(tokenizer.to_str())
    vocab = {token: index for token, index in state["model"]["vocab"].items() if token not in specials}
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in state["model"]["merges"]]
    return vocab, merges


def qwen_tokenizer(vocab_size: int = 640, chat_template: str | None = QWEN3_CHAT_TEMPLATE):
    """A Qwen2Tokenizer (the class Qwen-Image, Z-Image and FLUX.2 klein load) with Qwen's special tokens."""
    from transformers import Qwen2Tokenizer

    vocab, merges = _learned_bpe(vocab_size, [])
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        model_max_length=131072,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS})
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def mistral_tokenizer(vocab_size: int = 640):
    """A fast tokenizer with Mistral's control tokens and chat template (FLUX.2 dev's text encoder)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]"]
    vocab, merges = _learned_bpe(vocab_size, [])
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        model_max_length=131072,
    )
    tokenizer.chat_template = MISTRAL_CHAT_TEMPLATE
    return tokenizer
