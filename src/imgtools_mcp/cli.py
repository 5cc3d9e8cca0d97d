"""The `imgtools-mcp` command: serve, generate, doctor, make-test-model."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from . import __version__

# CLI flag -> Settings field; every flag mirrors an IMGTOOLS_* variable.
SETTING_FLAGS: dict[str, dict[str, Any]] = {
    "model": {"help": "default model: HF id, diffusers folder or .safetensors (IMGTOOLS_MODEL)"},
    "output_dir": {"help": "output folder (IMGTOOLS_OUTPUT_DIR)"},
    "input_roots": {"help": "comma-separated folders image inputs may be read from (IMGTOOLS_INPUT_ROOTS)"},
    "model_dirs": {"help": "comma-separated folders scanned for models (IMGTOOLS_MODEL_DIRS)"},
    "lora_dirs": {"help": "comma-separated folders scanned for LoRAs (IMGTOOLS_LORA_DIRS)"},
    "device": {"help": "auto | cpu | cuda[:N] | xpu | mps (IMGTOOLS_DEVICE)"},
    "dtype": {"choices": ["auto", "fp32", "fp16", "bf16"], "help": "(IMGTOOLS_DTYPE)"},
    "backend": {"choices": ["auto", "torch", "openvino", "onnxruntime"], "help": "(IMGTOOLS_BACKEND)"},
    "memory": {
        "choices": ["auto", "resident", "vae_tiling", "model_offload", "group_offload", "sequential_offload"],
        "help": "memory plan (IMGTOOLS_MEMORY)",
    },
    "max_pixels": {"type": int, "help": "largest width*height (IMGTOOLS_MAX_PIXELS)"},
    "max_input_bytes": {"type": int, "help": "largest image input, file, base64 or URL download (IMGTOOLS_MAX_INPUT_BYTES)"},
    "max_queue": {"type": int, "help": "requests that may wait for the engine (IMGTOOLS_MAX_QUEUE)"},
    "model_cache_bytes": {
        "help": "memory budget for loaded models, e.g. 12GiB; least recently used are evicted (IMGTOOLS_MODEL_CACHE_BYTES)"
    },
    "vlm_base_url": {"help": "OpenAI-compatible VLM endpoint (IMGTOOLS_VLM_BASE_URL)"},
    "vlm_model": {"help": "VLM model id (IMGTOOLS_VLM_MODEL)"},
    "vlm_api_key": {"help": "VLM key (IMGTOOLS_VLM_API_KEY / OPENROUTER_API_KEY)"},
    "auth_token": {"help": "bearer token required over HTTP (IMGTOOLS_AUTH_TOKEN)"},
    "allowed_hosts": {"help": "comma-separated extra Host values accepted over HTTP (IMGTOOLS_ALLOWED_HOSTS)"},
    "allowed_origins": {"help": "comma-separated extra browser Origins accepted over HTTP (IMGTOOLS_ALLOWED_ORIGINS)"},
    "max_request_bytes": {"type": int, "help": "largest HTTP request body in bytes (IMGTOOLS_MAX_REQUEST_BYTES)"},
    "request_timeout_s": {"type": float, "help": "longest a single generation may run, seconds (IMGTOOLS_REQUEST_TIMEOUT_S)"},
    "cache_dir": {"help": "folder for compiled backend models, e.g. OpenVINO IR (IMGTOOLS_CACHE_DIR)"},
}


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration (flags override IMGTOOLS_* variables)")
    for name, options in SETTING_FLAGS.items():
        group.add_argument("--" + name.replace("_", "-"), dest=name, default=None, **options)


def settings_from(args: argparse.Namespace):
    from .config import Settings

    overrides = {name: getattr(args, name) for name in SETTING_FLAGS if getattr(args, name, None) is not None}
    return Settings(**overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgtools-mcp", description="MCP server of image tools on a local diffusers engine")
    parser.add_argument("--version", action="version", version=f"imgtools-mcp {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve MCP over stdio (default) or Streamable HTTP")
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    _add_setting_flags(serve)

    gen = sub.add_parser("generate", help="generate an image from a shell with the same engine")
    gen.add_argument("prompt")
    gen.add_argument("-o", "--out", type=Path, help="also copy the PNG here")
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--width", type=int)
    gen.add_argument("--height", type=int)
    gen.add_argument("--steps", type=int)
    gen.add_argument("--guidance-scale", type=float)
    gen.add_argument("--sampler", default="default")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--num-images", type=int, default=1)
    _add_setting_flags(gen)

    doctor = sub.add_parser("doctor", help="show what the engine detected and would choose, and the VLM status")
    doctor.add_argument("--json", action="store_true", help="print JSON")
    _add_setting_flags(doctor)

    make = sub.add_parser("make-test-model", help="write a tiny random-weight pipeline for offline tests and demos")
    make.add_argument("dir", type=Path)
    make.add_argument("--family", choices=["sd15", "sdxl", "sd15-inpaint"], default="sd15")
    make.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # stdout is the MCP channel under stdio: every log line goes to stderr.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "make-test-model":
            from .engine.testmodel import make_test_model

            path = make_test_model(args.dir, args.family, seed=args.seed)
            print(f"wrote tiny {args.family} pipeline to {path}")
            return 0
        settings = settings_from(args)
        if args.command == "serve":
            from .serve import serve

            return serve(settings, args.transport, args.host, args.port)
        if args.command == "generate":
            from .shell import generate_from_shell

            return generate_from_shell(settings, args)
        if args.command == "doctor":
            from .doctor import doctor

            return doctor(settings, as_json=args.json)
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:  # configuration errors from pydantic-settings and the engine's choices
        print(f"imgtools-mcp: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
