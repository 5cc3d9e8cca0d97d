"""The `imgtools-mcp` command: serve, generate, doctor, engine-serve, make-test-model."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import typing
import warnings
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import __version__
from .config import config_errors


def _flag_options(name: str) -> dict[str, Any]:
    """argparse options for one Settings field, derived from the field itself so no setting lacks a flag.

    Values stay strings (booleans aside) and go through Settings, so a flag is validated exactly like
    its environment variable and a bad one is reported the same way.
    """
    from .config import Settings, env_names

    info = Settings.model_fields[name]
    variables = " / ".join(env_names(name))
    description = (info.description or "").rstrip(".").replace("%", "%%")  # argparse formats help with %
    options: dict[str, Any] = {"help": f"{description} ({variables})" if description else f"({variables})"}
    annotation = info.annotation
    choices = [arg for arg in typing.get_args(annotation)] if typing.get_origin(annotation) is typing.Literal else []
    if annotation is bool:
        options["action"] = argparse.BooleanOptionalAction
    elif choices:
        options["choices"] = choices
    elif typing.get_origin(annotation) is list or "list" in str(annotation):
        options["metavar"] = "A,B"
    elif annotation in (int, float) or str(annotation) in ("int | None", "float | None"):
        options["metavar"] = "N"
    return options


def setting_fields() -> list[str]:
    from .config import Settings

    return list(Settings.model_fields)


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    from .config import flag_name

    group = parser.add_argument_group("configuration (flags override IMGTOOLS_* variables)")
    for name in setting_fields():
        group.add_argument(flag_name(name), dest=name, default=None, **_flag_options(name))


def settings_from(args: argparse.Namespace):
    from .config import Settings

    overrides = {name: getattr(args, name) for name in setting_fields() if getattr(args, name, None) is not None}
    return Settings(**overrides)


def _verbose_flag(parser: argparse.ArgumentParser, *, default: Any) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="log detail (library warnings, timings, debug lines) to stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgtools-mcp", description="MCP server of image tools on a local diffusers engine")
    parser.add_argument("--version", action="version", version=f"imgtools-mcp {__version__}")
    _verbose_flag(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve MCP over stdio (default) or Streamable HTTP")
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    _verbose_flag(serve, default=argparse.SUPPRESS)
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
    _verbose_flag(gen, default=argparse.SUPPRESS)
    _add_setting_flags(gen)

    doctor = sub.add_parser("doctor", help="show what the engine detected and would choose, and the VLM status")
    doctor.add_argument("--json", action="store_true", help="print JSON")
    _verbose_flag(doctor, default=argparse.SUPPRESS)
    _add_setting_flags(doctor)

    engine_serve = sub.add_parser(
        "engine-serve", help="deploy the engine as Ray Serve ImageEngine replicas (one per GPU) for IMGTOOLS_ENGINE=ray"
    )
    from .engine.ray_cli import add_engine_serve_flags

    add_engine_serve_flags(engine_serve)
    _verbose_flag(engine_serve, default=argparse.SUPPRESS)
    _add_setting_flags(engine_serve)

    make = sub.add_parser("make-test-model", help="write a tiny random-weight pipeline for offline tests and demos")
    make.add_argument("dir", type=Path)
    # Builders register themselves (imgtools_mcp/testing/tiny_<family>.py); an unknown id is refused naming them.
    make.add_argument("--family", default="sd15", help="sd15, sdxl, sd15-inpaint, sd3, flux, flux-schnell, flux-kontext, flux-fill, chroma, ...")
    make.add_argument("--seed", type=int, default=0)
    _verbose_flag(make, default=argparse.SUPPRESS)
    return parser


def configure_output(command: str, verbose: bool) -> None:
    """Quiet unless -v: our own progress lines, warnings and errors; no library chatter.

    stdout is the MCP channel under stdio, so every log line goes to stderr. Without -v, library warnings
    (torch tracer, deprecations, torchvision fallbacks) and download/load progress bars are off; those
    libraries read these variables when they are imported, which happens after this.
    """
    if verbose:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return
    for variable, value in (
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("DIFFUSERS_VERBOSITY", "error"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
    ):
        os.environ.setdefault(variable, value)
    warnings.simplefilter("ignore")
    if command == "serve":
        # A server's log: its own INFO lines with times, everything else from WARNING up.
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:
        # A command in a terminal: one plain line per thing worth knowing (loading, converting, problems).
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="imgtools-mcp: %(message)s")
    # torchao (transformers imports it) on CPU torch; bitsandbytes (diffusers imports it with every model where it is
    # installed) on an AVX512-BF16 CPU looks for an optional batch-1 LLM kernel on the Hub and warns when it is not
    # there, which a diffusion step's many-token matmuls never use.
    for noisy in ("torchao", "torch.utils._pytree", "bitsandbytes.backends.cpu.ops"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.getLogger("imgtools_mcp").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_output(args.command, args.verbose)
    try:
        if args.command == "make-test-model":
            from .testing import make_test_model

            path = make_test_model(args.dir, args.family, seed=args.seed)
            print(f"wrote tiny {args.family} pipeline to {path}")
            return 0
        try:
            settings = settings_from(args)
        except ValidationError as exc:
            for line in config_errors(exc):
                print(f"imgtools-mcp: {line}", file=sys.stderr)
            return 2
        if args.command == "engine-serve":
            from .engine.ray_cli import engine_serve

            return engine_serve(settings, args)
        if args.command == "serve":
            from .engine.ray_cli import require_engine
            from .serve import serve

            require_engine(settings)  # IMGTOOLS_ENGINE=ray without Ray Serve installed: one line, before serving

            return serve(settings, args.transport, args.host, args.port)
        if args.command == "generate":
            from .shell import generate_from_shell

            return generate_from_shell(settings, args)
        if args.command == "doctor":
            from .doctor import doctor

            return doctor(settings, as_json=args.json)
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:  # the engine's refusals of a configuration (e.g. a backend this machine lacks)
        print(f"imgtools-mcp: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
