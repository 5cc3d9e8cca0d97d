"""Settings from IMGTOOLS_* environment variables and matching CLI flags."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated

DEFAULT_OUTPUT_DIR = Path("~/.local/share/imgtools-mcp/outputs")
DEFAULT_CACHE_DIR = Path("~/.cache/imgtools-mcp")
# Sent to OpenRouter as HTTP-Referer and X-Title so its dashboards name the app making the calls.
PROJECT_URL = "https://pypi.org/project/imgtools-mcp/"
PROJECT_TITLE = "imgtools-mcp"
ENV_PREFIX = "IMGTOOLS_"


def _split_paths(value: object) -> object:
    # Environment variables carry path lists the way PATH does (os.pathsep) or comma-separated.
    if isinstance(value, str):
        return [part.strip() for part in re.split(rf"[,{re.escape(os.pathsep)}]", value) if part.strip()]
    return value


COMPILE_MODES = ("auto", "off", "regional", "cudagraphs")
_COMPILE_ALIASES = {"true": "regional", "1": "regional", "yes": "regional", "on": "regional",
                    "false": "off", "0": "off", "no": "off"}  # fmt: skip


def normalize_compile(value: object) -> str:
    """IMGTOOLS_TORCH_COMPILE: auto, off, regional or cudagraphs; the old booleans still work (true = regional)."""
    name = str(value).strip().lower()
    name = _COMPILE_ALIASES.get(name, name)
    if name not in COMPILE_MODES:
        raise ValueError(f"must be one of {', '.join(COMPILE_MODES)} (or true/false); got {value!r}")
    return name


PathList = Annotated[list[Path], NoDecode]
StrList = Annotated[list[str], NoDecode]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_bytes(value: object) -> object:
    """`8GiB`, `8G`, `6.5GB`, `512MiB` or a plain number of bytes; units are powers of 1024 (as `free -g` shows)."""
    if not isinstance(value, str):
        return value
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(f"a size like 8GiB, 512MiB or a number of bytes; got {value!r}")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** "_kmgt".index(unit or "_"))


class Settings(BaseSettings):
    """Everything the server and engine are configured with; built once, passed down."""

    model_config = SettingsConfigDict(env_prefix="IMGTOOLS_", extra="ignore", populate_by_name=True)

    model: str = Field(
        "auto",
        description="Default model: a HuggingFace id, a local diffusers folder, a .safetensors checkpoint, or auto "
        "(sd-turbo on a CPU or small GPU, Z-Image-Turbo or FLUX.2 klein where one fits; engine_status says why).",
    )
    edit_model: str | None = Field(
        None,
        description="Model `edit` uses when a request names none, e.g. an instruction-edit model (FLUX.1 Kontext, "
        "Qwen-Image-Edit); default: the default model.",
    )
    output_dir: Path = Field(DEFAULT_OUTPUT_DIR, description="Where images, sidecars and job records are written.")
    input_roots: PathList = Field(
        default_factory=list, description="Folders whose files may be read as image inputs (default: output_dir)."
    )
    model_dirs: PathList = Field(default_factory=list, description="Folders scanned for local models.")
    lora_dirs: PathList = Field(default_factory=list, description="Folders scanned for LoRA files.")
    upscaler_dirs: PathList = Field(
        default_factory=list, description="Folders scanned for upscaler weights (.pth/.safetensors: ESRGAN, RealPLKSR, ...)."
    )
    controlnet_dirs: PathList = Field(default_factory=list, description="Folders scanned for ControlNet models.")
    depth_model: str = Field(
        "depth-anything/Depth-Anything-V2-Small-hf",
        description="The transformers depth model `control` type depth uses (a hub id or a local folder).",
    )
    pose_model: str = Field(
        "usyd-community/vitpose-base-simple",
        description="The ViTPose model `control` type pose uses (a hub id or a local folder).",
    )
    person_detector: str = Field(
        "PekingU/rtdetr_r50vd_coco_o365",
        description="The RT-DETR model that finds the people `control` type pose poses; none: the whole image is "
        "one person (also what is used when it finds no one).",
    )
    segmenter: str = Field(
        "auto",
        description="The SAM model that cuts mask_prompt's boxes to silhouettes: auto (facebook/sam-vit-base where it "
        "is already on disk, else boxes), none (boxes), or a hub id or folder (downloaded if needed).",
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | xpu | mps")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field("auto", description="Weights' precision; auto picks by device.")
    backend: Literal["auto", "torch", "openvino"] = Field(
        "auto", description="What runs the denoiser and VAE; auto picks per model and device."
    )
    memory: Literal["auto", "resident", "vae_tiling", "model_offload", "group_offload", "sequential_offload"] = Field(
        "auto", description="Memory plan; auto picks from the model's footprint and free memory."
    )
    quantize: Literal[
        "auto", "none", "int8", "4bit", "torchao_int8", "torchao_fp8", "sdnq_int8", "nncf_int8", "nncf_w8a8", "bnb_nf4",
        "sdnq_int4",
    ] = Field(
        "auto",
        description="Quantized weights: auto quantizes only when that keeps a model resident that would otherwise "
        "be offloaded (and, on a VNNI/AMX CPU, calibrates int8 activations for OpenVINO UNets); none never; int8/4bit "
        "the best method of that level here; or a method by name.",
    )
    max_pixels: int = Field(2048 * 2048, ge=64 * 64, description="Largest width*height a request may ask for.")
    max_input_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest image input (file, base64 or URL download) in bytes."
    )
    max_queue: int = Field(16, ge=0, description="Requests that may wait for the engine before 'busy' errors.")
    model_cache_bytes: int | None = Field(
        None,
        ge=0,
        description="Memory budget for loaded pipelines (weights plus LoRA adapters), e.g. 12GiB; the least recently "
        "used are evicted to fit a new one (0: one model at a time). Default: 60% of the device's memory.",
    )
    max_sweep_cells: int = Field(64, ge=1, description="Most cells (x × y × z values) one sweep may have.")
    max_grid_pixels: int = Field(
        80_000_000, ge=64 * 64, description="Largest sweep grid (width*height); below Pillow's decompression-bomb guard."
    )
    request_timeout_s: float = Field(1800.0, gt=0, description="Longest a single generation may run.")
    hf_offline: bool = Field(False, description="Never contact the HuggingFace Hub; use the local cache only.")
    cache_dir: Path = Field(
        DEFAULT_CACHE_DIR,
        description="Where compiled backend models are kept between runs (OpenVINO IR and compiled blobs).",
    )
    torch_compile: Literal["auto", "off", "regional", "cudagraphs"] = Field(
        "auto",
        description="torch backend: auto (cudagraphs on CUDA 8.0+, off elsewhere), off, regional (the denoiser's "
        "repeated blocks) or cudagraphs (the whole denoiser with CUDA graphs); each size compiles on first use.",
    )
    warmup: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Load the default model at start and run it once at its native size in the background, so "
        "the first request neither loads nor compiles: auto (where the torch backend compiles the denoiser), on, off.",
    )
    engine: Literal["local", "ray"] = Field(
        "local",
        description="Where images are made: local (in this process) or ray (Ray Serve ImageEngine replicas; "
        "the `ray` extra; deploy them with `imgtools-mcp engine-serve`).",
    )
    ray_address: str | None = Field(
        None,
        description="The Ray cluster for engine=ray and engine-serve: auto (the one `ray start` runs here), "
        "host:port or ray://host:10001. engine-serve without it starts a local Ray instance.",
    )
    ray_app: str = Field("imgtools", min_length=1, description="The Ray Serve application name of the engine replicas.")

    allow_private_urls: StrList = Field(
        default_factory=list,
        description="Comma-separated hosts and CIDRs (e.g. 127.0.0.1, 10.0.0.0/8, nas.lan) that http(s) image and "
        "video URLs may reach although they are loopback, private, link-local or otherwise not public.",
    )

    vlm_base_url: str = Field("https://openrouter.ai/api/v1", description="OpenAI-compatible VLM endpoint.")
    vlm_model: str = Field("qwen/qwen3.5-35b-a3b", description="The describing and critiquing model.")
    vlm_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("IMGTOOLS_VLM_API_KEY", "OPENROUTER_API_KEY", "vlm_api_key"),
        description="The VLM key (also read from OPENROUTER_API_KEY); never shown by any tool.",
    )
    vlm_provider: Literal["auto", "openrouter", "openai"] = Field(
        "auto",
        description="What kind of server the VLM endpoint is: openrouter (attribution headers, cost, routing fields), "
        "openai (standard fields only); auto: openrouter when the URL's host is openrouter.ai.",
    )
    vlm_timeout_s: float = Field(
        120.0, gt=0, description="Longest one VLM call may take in all, its retries included, in seconds."
    )
    vlm_app_url: str = Field(
        PROJECT_URL, description="HTTP-Referer sent to OpenRouter for app attribution (empty: not sent)."
    )
    vlm_app_title: str = Field(PROJECT_TITLE, description="X-Title sent to OpenRouter for app attribution (empty: not sent).")
    auth_token: SecretStr | None = Field(None, description="Bearer token required over HTTP (16+ characters).")
    allowed_hosts: StrList = Field(
        default_factory=list,
        description="Comma-separated Host values accepted over HTTP besides the bound address and loopback names "
        "(host or host:port; host alone allows any port), e.g. a LAN name or a reverse proxy's.",
    )
    allowed_origins: StrList = Field(
        default_factory=list,
        description="Comma-separated browser Origins accepted over HTTP besides the allowed hosts' own "
        "(scheme://host[:port]; :* allows any port). Requests without an Origin (non-browser clients) are not affected.",
    )
    max_request_bytes: int = Field(
        48 * 1024 * 1024,
        ge=64 * 1024,
        description="Largest HTTP request body: room for one IMGTOOLS_MAX_INPUT_BYTES image sent inline as base64.",
    )
    gallery: bool = Field(
        True,
        description="Over HTTP, serve GET /gallery (outputs, lineage, live jobs; same token as /mcp). Never over stdio.",
    )

    @field_validator("input_roots", "model_dirs", "lora_dirs", "upscaler_dirs", "controlnet_dirs", mode="before")
    @classmethod
    def _paths(cls, value: object) -> object:
        return _split_paths(value)

    @field_validator("torch_compile", mode="before")
    @classmethod
    def _compile_mode(cls, value: object) -> str:
        return normalize_compile(value)

    @field_validator("model_cache_bytes", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        return parse_bytes(value)

    @field_validator("auth_token", mode="after")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None  # an empty IMGTOOLS_AUTH_TOKEN means no token, not a token anyone can send
        if len(value.get_secret_value()) < 16:
            # The message never repeats the value: it is a secret, and errors end up in logs and terminals.
            raise ValueError(
                "too short; use at least 16 characters (e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)"
            )
        return value

    @field_validator("allowed_hosts", "allowed_origins", "allow_private_urls", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        # Host and origin values contain ':' (ports), so only commas separate them.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("output_dir", "cache_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def allowed_input_roots(self) -> list[Path]:
        roots = self.input_roots or [self.output_dir]
        return [Path(r).expanduser().resolve() for r in roots]


def env_names(field: str) -> list[str]:
    """The environment variable(s) a Settings field is read from, in the order they are tried."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return [choice for choice in alias.choices if isinstance(choice, str) and choice.isupper()]
    return [ENV_PREFIX + field.upper()]


def flag_name(field: str) -> str:
    """The CLI flag of a Settings field: `max_sweep_cells` -> `--max-sweep-cells`."""
    return "--" + field.replace("_", "-")


def config_errors(error: ValidationError) -> list[str]:
    """One line per bad setting, naming its variable and flag and what is allowed; never the value given.

    pydantic's own text repeats each input (`input_value=...`), which would print a secret such as a
    too-short IMGTOOLS_AUTH_TOKEN back to the terminal and into logs.
    """
    lines: list[str] = []
    for item in error.errors(include_input=False, include_url=False):
        field = str(item["loc"][0]) if item["loc"] else ""
        if field not in Settings.model_fields:
            field = next((name for name in Settings.model_fields if field in env_names(name)), field)
        if field in Settings.model_fields:
            where = " / ".join(env_names(field)) + f" ({flag_name(field)})"
        else:
            where = field or "configuration"
        message = str(item["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        lines.append(f"{where}: {message}")
    return lines
