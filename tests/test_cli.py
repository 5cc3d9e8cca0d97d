"""The `imgtools-mcp` command as a shell user meets it: every setting has a flag, errors are one line each (never a
secret), `generate` refuses bad arguments before loading torch and is quiet unless -v, doctor tells the truth and
exits non-zero on a problem; the README's configuration table lists exactly the settings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from imgtools_mcp.cli import build_parser, settings_from
from imgtools_mcp.config import Settings, env_names, flag_name

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def cli(*argv: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    from server_process import server_env

    environment = server_env(Path("/nonexistent-model"), Path("/tmp/imgtools-cli-test-out"))
    environment.pop("IMGTOOLS_MODEL")
    environment.pop("HF_HUB_OFFLINE")
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "imgtools_mcp.cli", *argv], env=environment, capture_output=True,
                          text=True, timeout=timeout)


# --- flags ---------------------------------------------------------------------------------------


def sample_value(name: str) -> tuple[list[str], object]:
    """Command-line words that set a field, and the value Settings should then hold."""
    info = Settings.model_fields[name]
    annotation = str(info.annotation)
    if info.annotation is bool:
        default = Settings().__getattribute__(name) if name != "vlm_api_key" else None
        return ([flag_name(name)] if not default else ["--no-" + flag_name(name)[2:]]), (not default)
    if "Literal" in annotation:
        choice = list(info.annotation.__args__)[-1]
        return [flag_name(name), choice], choice
    if "list" in annotation:
        return [flag_name(name), "a,b"], None
    if "int" in annotation:
        return [flag_name(name), "123456789"], 123456789
    if "float" in annotation:
        return [flag_name(name), "12.5"], 12.5
    return [flag_name(name), "value-of-16-chars-at-least"], None


@pytest.mark.parametrize("command", ["serve", "generate", "doctor"])
def test_every_setting_has_a_flag_that_sets_it(command: str) -> None:
    """Derived from the Settings fields, so a setting added later gets its flag too."""
    for name in Settings.model_fields:
        words, expected = sample_value(name)
        argv = [command, *(["a prompt"] if command == "generate" else []), *words]
        args = build_parser().parse_args(argv)
        value = getattr(settings_from(args), name)
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if expected is None:
            assert value not in (None, [], Settings.model_fields[name].default), (name, value)
        else:
            assert value == expected, (name, value)


def test_verbose_is_accepted_before_and_after_the_subcommand() -> None:
    parser = build_parser()
    assert parser.parse_args(["-v", "serve"]).verbose and parser.parse_args(["serve", "-v"]).verbose
    assert parser.parse_args(["generate", "x", "--verbose"]).verbose and parser.parse_args(["doctor", "-v"]).verbose
    assert not parser.parse_args(["serve"]).verbose


def test_the_readme_table_lists_exactly_the_settings() -> None:
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `IMGTOOLS_") or line.startswith("| `OPENROUTER")]
    documented = {name for row in rows for name in re.findall(r"`((?:IMGTOOLS|OPENROUTER)_[A-Z_]+)`", row.split("|")[1])}
    variables = {variable for name in Settings.model_fields for variable in env_names(name)}
    assert documented == variables, {"missing from README": variables - documented, "not settings": documented - variables}


# --- errors --------------------------------------------------------------------------------------


def test_configuration_errors_are_one_line_per_variable_and_never_show_a_secret() -> None:
    secret = "tiny-secret"
    proc = cli("doctor", env={"IMGTOOLS_AUTH_TOKEN": secret, "IMGTOOLS_MAX_PIXELS": "huge", "IMGTOOLS_DTYPE": "fp8"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3, proc.stderr
    for variable in ("IMGTOOLS_AUTH_TOKEN", "IMGTOOLS_MAX_PIXELS", "IMGTOOLS_DTYPE"):
        assert sum(variable in line for line in lines) == 1, (variable, proc.stderr)
    assert secret not in proc.stderr + proc.stdout and "input_value" not in proc.stderr


def test_generate_refuses_a_bad_width_before_torch_is_imported() -> None:
    proc = cli("generate", "x", "--width", "65")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["imgtools-mcp: width: Input should be a multiple of 8 (got 65)"]
    probe = (
        "import sys; from imgtools_mcp.cli import main; "
        "rc = main(['generate', 'x', '--width', '65']); print(rc, 'torch' in sys.modules, 'diffusers' in sys.modules)"
    )
    checked = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert checked.stdout.split() == ["2", "False", "False"], checked.stderr


@pytest.mark.slow
def test_generate_is_quiet_and_prints_an_error_once_in_plain_words(tiny_sd15: Path, tmp_path: Path) -> None:
    made = cli("generate", "a cat", "--model", str(tiny_sd15), "--output-dir", str(tmp_path), "--width", "64",
               "--height", "64", "--steps", "2", env={"HF_HUB_OFFLINE": "1"})
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines()[1].endswith(".png")
    noise = ("Warning", "warn", "TracerWarning", "torchvision", "it/s", "Loading pipeline", "deprecated", "Traceback",
             "Failed")  # fmt: skip
    assert not [word for word in noise if word in made.stderr], made.stderr
    # The step bar and a status line per kind of slow work (each redrawn with \r, which text mode reads as new
    # lines): loading the model, component by component, and nothing else.
    other = [line for line in made.stderr.splitlines() if line.strip() and not line.startswith("[")]
    assert all(line.startswith("imgtools-mcp: ") for line in other), made.stderr
    assert any(line.startswith(f"imgtools-mcp: loading {tiny_sd15.name}: ") and "(1/" in line for line in other), made.stderr
    assert len({line.split(":")[1] for line in other}) <= 3, made.stderr  # "loading <model>", "loaded <model> in ..."

    failed = cli("generate", "a cat", "--model", str(tmp_path / "no-such-model"), "--output-dir", str(tmp_path),
                 env={"HF_HUB_OFFLINE": "1"})
    assert failed.returncode == 1
    errors = [line for line in failed.stderr.splitlines() if "no-such-model" in line]
    assert len(errors) == 1, failed.stderr
    assert errors[0].startswith("imgtools-mcp: model:") and "Error executing tool" not in failed.stderr


# --- doctor --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_doctor_says_what_is_true_and_fails_on_problems(tmp_path: Path) -> None:
    missing = cli("doctor", "--model", str(tmp_path / "no-such-model"), env={"IMGTOOLS_CACHE_DIR": str(tmp_path)})
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert "PROBLEM" in missing.stdout + missing.stderr and "offline mode is on" not in missing.stdout + missing.stderr
    assert "hub:      online" in missing.stdout

    # A hub id not downloaded yet, with nobody asking for offline mode: the first call downloads it; no problem.
    online = cli("doctor", "--model", "someone/not-downloaded-yet", env={"HF_HOME": str(tmp_path / "hf")})
    assert online.returncode == 0, online.stdout + online.stderr
    assert "not downloaded yet" in online.stdout and "offline mode is on" not in online.stdout

    offline = cli("doctor", "--model", "someone/not-downloaded-yet", env={"HF_HOME": str(tmp_path / "hf"),
                                                                          "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 1
    assert "offline mode is on (HF_HUB_OFFLINE is set)" in offline.stdout
