"""The launcher and the `tandem cloud` command without a running server: profiles, the
--speculative mapping, dry runs, key files, and what the command imports."""

from __future__ import annotations

import json
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cloud.gateway.keys import KeyStore, KeyStoreError
from cloud.launch import LaunchError, LaunchOptions, build_vllm_command, load_profile
from tui.commands.cloud import main as cloud_main


def _dry_run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[dict[str, str], list[str]]:
    assert cloud_main(["serve", "--dry-run", *args]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if not x.startswith("#"))
    words = shlex.split(line)
    env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
    argv = [w for w in words if not ("=" in w and not w.startswith("-"))]
    return env, argv


def _value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_h100_dry_run_prints_the_expected_flags(capsys: pytest.CaptureFixture[str]) -> None:
    env, argv = _dry_run(capsys, "--model", "Qwen/Qwen3-8B", "--profile", "h100")
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert _value(argv, "--model") == "Qwen/Qwen3-8B"
    # vLLM listens on a private Unix socket, on no TCP port at all, and never logs requests
    assert _value(argv, "--uds").endswith("/vllm.sock") and "--host" not in argv
    assert "--port" not in argv and "--no-enable-log-requests" in argv
    assert "--enable-prefix-caching" in argv
    assert _value(argv, "--gpu-memory-utilization") == "0.9"
    assert _value(argv, "--kv-cache-dtype") == "fp8"
    assert _value(argv, "--quantization") == "fp8"
    assert _value(argv, "--tensor-parallel-size") == "1"
    assert int(_value(argv, "--max-num-seqs")) > 0
    assert "--enforce-eager" not in argv
    spec = json.loads(_value(argv, "--speculative-config"))
    assert spec["method"] == "ngram" and spec["num_speculative_tokens"] == 4
    assert "--enable-lora" in argv and env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1"
    assert "--api-key" not in argv  # the upstream secret travels in the environment


def test_dry_run_options_override_the_profile(capsys: pytest.CaptureFixture[str]) -> None:
    _, argv = _dry_run(
        capsys, "--model", "m", "--profile", "h100", "--speculative", "mtp", "--no-lora",
        "--num-speculative-tokens", "2", "--tensor-parallel-size", "4", "--max-num-seqs", "64",
    )  # fmt: skip
    assert json.loads(_value(argv, "--speculative-config")) == {
        "method": "mtp",
        "num_speculative_tokens": 2,
    }
    assert _value(argv, "--tensor-parallel-size") == "4"
    assert _value(argv, "--max-num-seqs") == "64"
    assert "--enable-lora" not in argv


def test_online_fp8_is_left_out_for_an_already_quantized_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"quantization_config": {"quant_method": "awq"}})
    )
    command = build_vllm_command(LaunchOptions(model=str(tmp_path)), load_profile("h100"))
    assert "--quantization" not in command.argv
    assert _value(command.argv, "--kv-cache-dtype") == "fp8"


def test_cpu_profile_runs_eager_in_float32_with_a_bounded_kv_cache(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env, argv = _dry_run(capsys, "--model", "m", "--profile", "cpu")
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert "--enforce-eager" in argv and _value(argv, "--dtype") == "float32"
    assert "--speculative-config" not in argv
    assert _value(argv, "--max-lora-rank") == "8"


def test_speculative_methods_map_to_vllm_configs(test_models_dirs: tuple[Path, Path]) -> None:
    target, draft = test_models_dirs
    profile = load_profile("cpu")

    def spec(value: str) -> dict[str, object]:
        options = LaunchOptions(model=str(target), speculative=value, num_speculative_tokens=3)
        command = build_vllm_command(options, profile)
        return json.loads(_value(command.argv, "--speculative-config"))

    assert spec("ngram")["method"] == "ngram"
    assert spec(f"draft:{draft}") == {
        "method": "draft_model",
        "model": str(draft),
        "num_speculative_tokens": 3,
    }


@pytest.mark.parametrize(
    ("value", "lora", "message"),
    [
        ("medusa", True, "unknown speculative method"),
        ("draft", True, "needs a model"),
        ("eagle3:/some/head", True, "cannot combine"),
        ("mtp", True, "cannot combine"),
        ("ngram:x", True, "takes no model"),
        ("draft:/does/not/exist", True, "does not exist"),
    ],
)
def test_invalid_combinations_fail_before_anything_starts(
    capsys: pytest.CaptureFixture[str], value: str, lora: bool, message: str
) -> None:
    args = ["serve", "--dry-run", "--model", "m", "--profile", "cpu", "--speculative", value]
    assert cloud_main(args if lora else [*args, "--no-lora"]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_draft_with_another_tokenizer_is_refused(
    tmp_path: Path, test_models_dirs: tuple[Path, Path]
) -> None:
    target, draft = test_models_dirs
    other = tmp_path / "other-draft"
    other.mkdir()
    tokenizer = json.loads((draft / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"] = {"a": 0, "b": 1}
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    options = LaunchOptions(model=str(target), speculative=f"draft:{other}")
    with pytest.raises(LaunchError, match="different tokenizer"):
        build_vllm_command(options, load_profile("cpu"))
    same = LaunchOptions(model=str(target), speculative=f"draft:{draft}")
    assert build_vllm_command(same, load_profile("cpu")).speculative is not None


def test_a_profile_file_can_be_copied_and_edited(tmp_path: Path) -> None:
    text = (Path(__file__).parent.parent / "cloud/profiles/cpu.toml").read_text()
    edited = tmp_path / "mine.toml"
    edited.write_text(
        text.replace('method = ""', 'method = "ngram"').replace("seed = 0", "seed = 7")
    )
    command = build_vllm_command(LaunchOptions(model="m"), load_profile(str(edited)))
    assert _value(command.argv, "--seed") == "7"
    assert json.loads(_value(command.argv, "--speculative-config"))["method"] == "ngram"
    bad = tmp_path / "bad.toml"
    bad.write_text('[vllm]\nhost = "0.0.0.0"\n')
    with pytest.raises(LaunchError, match="must not set host"):
        load_profile(str(bad))
    with pytest.raises(LaunchError, match="no profile"):
        load_profile("a100")


@pytest.mark.parametrize(
    "line",
    [
        'host = "0.0.0.0"',
        '"host=0.0.0.0" = true',
        '"--host=0.0.0.0" = true',
        'HOST = "0.0.0.0"',
        'ho = "0.0.0.0"',  # argparse takes an abbreviation of --host
        'served_model_name = "x"',
        'config = "/tmp/evil.yaml"',
        'uds = "/tmp/open.sock"',
        "enable-log-requests = true",
        "enable_log_outputs = true",
        'dtype = "--host=0.0.0.0"',
    ],
)
def test_a_profile_cannot_move_vllm_or_log_prompts_in_any_spelling(
    tmp_path: Path, line: str
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[vllm]\n{line}\n")
    with pytest.raises(LaunchError):
        load_profile(str(bad))


@pytest.mark.parametrize(
    "env", ['VLLM_LOGGING_LEVEL = "debug"', 'VLLM_DEBUG_LOG_API_SERVER_RESPONSE = "1"']
)
def test_a_profile_cannot_turn_on_prompt_logging_in_the_environment(
    tmp_path: Path, env: str
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[env]\n{env}\n")
    with pytest.raises(LaunchError, match=r"must not|logs prompt"):
        load_profile(str(bad))


def test_extra_vllm_arguments_cannot_move_vllm_either() -> None:
    for arg in ("--host=0.0.0.0", "--port", "--Served_Model_Name=x", "--enable-log-requests"):
        with pytest.raises(LaunchError):
            build_vllm_command(
                LaunchOptions(model="m", extra_args=(arg,)), load_profile("cpu")
            )


def test_cloud_serve_refuses_plain_http_off_loopback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tui.cli", "cloud", "serve", "--model", str(tmp_path),
         "--profile", "cpu", "--host", "0.0.0.0", "--keys-file", str(tmp_path / "k.json")],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--insecure-http" in result.stderr and "--tls-cert" in result.stderr


def test_keys_are_stored_hashed_in_a_private_file(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "cloud" / "keys.json")
    key = store.add("alice")
    admin = store.add("ops", admin=True)
    text = store.path.read_text()
    assert key not in text and admin not in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.verify(key).name == "alice"  # type: ignore[union-attr]
    assert store.verify(admin).admin  # type: ignore[union-attr]
    assert store.verify(key + "x") is None and store.verify("") is None
    with pytest.raises(KeyStoreError, match="exists"):
        store.add("alice")
    store.revoke("alice")
    assert store.verify(key) is None
    with pytest.raises(KeyStoreError, match="no key"):
        store.revoke("alice")


def test_keys_command_adds_lists_and_revokes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = ["keys", "--keys-file", str(tmp_path / "keys.json")]
    assert cloud_main([*keys, "add", "bob"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("tdm_") and len(key) > 40
    assert cloud_main([*keys, "list"]) == 0
    listed = capsys.readouterr().out
    assert "bob" in listed and key not in listed
    assert cloud_main([*keys, "add", "bad name!"]) == 1
    assert "must be" in capsys.readouterr().err
    assert cloud_main([*keys, "revoke", "bob"]) == 0
    assert KeyStore(tmp_path / "keys.json").records() == []


def test_the_cloud_command_imports_neither_textual_nor_mlx() -> None:
    code = (
        "import sys; from tui.cli import main; "
        "main(['cloud', 'serve', '--dry-run', '--model', 'm', '--profile', 'cpu']); "
        "bad = [m for m in ('textual', 'mlx', 'mlx_lm') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert b"--speculative-config" not in result.stdout
    assert b"vllm.entrypoints.openai.api_server" in result.stdout


@pytest.fixture
def test_models_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """Two model folders with the same tokenizer (no weights needed: nothing is started)."""
    tokenizer = {"model": {"vocab": {"x": 0, "y": 1}, "merges": []}, "added_tokens": []}
    folders = []
    for name in ("target", "draft"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
        (folder / "config.json").write_text("{}")
        folders.append(folder)
    return folders[0], folders[1]
