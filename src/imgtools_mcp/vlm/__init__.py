"""Vision-language model access: an OpenAI-compatible client, media encoding, prompt templates."""

from .client import DEFAULT_BASE_URL, DEFAULT_MODEL, VLMClient
from .errors import (
    MediaError,
    VLMAuthError,
    VLMBadReply,
    VLMConfigError,
    VLMError,
    VLMOutOfCredits,
    VLMRateLimited,
    VLMRequestError,
    VLMTimeout,
    VLMUnavailable,
)
from .media import SampledFrame, VideoInfo, fit_pixels, image_to_data_url, probe_video, sample_frames
from .prompts import load_prompt, prompt_names, prompt_placeholders, render_prompt
from .schemas import (
    Critique,
    CritiqueResult,
    ParameterAdvice,
    ProblemRegion,
    Revision,
    RevisionResult,
    VLMText,
    VLMUsage,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "Critique",
    "CritiqueResult",
    "MediaError",
    "ParameterAdvice",
    "ProblemRegion",
    "Revision",
    "RevisionResult",
    "SampledFrame",
    "VLMAuthError",
    "VLMBadReply",
    "VLMClient",
    "VLMConfigError",
    "VLMError",
    "VLMOutOfCredits",
    "VLMRateLimited",
    "VLMRequestError",
    "VLMText",
    "VLMTimeout",
    "VLMUnavailable",
    "VLMUsage",
    "VideoInfo",
    "fit_pixels",
    "image_to_data_url",
    "load_prompt",
    "probe_video",
    "prompt_names",
    "prompt_placeholders",
    "render_prompt",
    "sample_frames",
]
