"""The command line: `check-config` exit codes and messages, `--version`, flags spelled with underscores or
dashes, and bad flags refused (exit 2) before anything starts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgebox import __version__
from edgebox.cli import EXIT_CONFIG, main
from edgebox.client import pb
from tests.support.engine import (
    EXIT_TIMEOUT_S,
    EngineProcess,
    aio,  # noqa: F401 - fixture
    connect,
    engine_config_data,
    write_config,
    write_plugin,
)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgebox", *args], check=False, capture_output=True, text=True,
                          timeout=EXIT_TIMEOUT_S)


def config_file(tmp_path: Path, data: dict) -> Path:
    return write_config(tmp_path / "engine.json", data)


# -- --version ----------------------------------------------------------------------------------------------------
def test_version_flag_prints_the_version_and_exits_0():
    proc = run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"edgebox {__version__}"


def test_installed_console_script_answers_version():
    script = shutil.which("edgebox", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the edgebox console script is not installed next to this interpreter")
    proc = subprocess.run([script, "--version"], check=False, capture_output=True, text=True, timeout=EXIT_TIMEOUT_S)
    assert (proc.returncode, proc.stdout.strip()) == (0, f"edgebox {__version__}")


# -- check-config -------------------------------------------------------------------------------------------------
def test_check_config_of_a_valid_file_exits_0_and_summarises_it(tmp_path):
    path = config_file(tmp_path, {"data_dir": "state", "grpc": {"port": 6000}, "console": {"enabled": False}})
    proc = run_cli("check-config", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout
    assert "127.0.0.1:6000" in proc.stdout
    assert str(tmp_path / "state") in proc.stdout  # relative to the file, not the working directory


@pytest.mark.parametrize(("data", "key_path"), [
    ({"engine": {"max_batch_size": 0}}, "engine.max_batch_size"),
    ({"grpc": {"port": "fast"}}, "grpc.port"),
    ({"console": {"host": "0.0.0.0"}}, "console.token"),
    ({"engine": {"turbo": True}}, "engine.turbo"),
    ({"provision": {"cameras": [{"camera_id": "c", "url": "ftp://x", "workflow_id": "w"}]}},
     "provision.cameras[0]"),
])
def test_check_config_of_an_invalid_file_exits_2_naming_the_key(tmp_path, capsys, data, key_path):
    assert main(["check-config", str(config_file(tmp_path, data))]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert key_path in err
    assert "invalid" in err


def test_check_config_process_exits_2_for_an_invalid_file(tmp_path):
    proc = run_cli("check-config", str(config_file(tmp_path, {"engine": {"max_batch_size": 0}})))
    assert proc.returncode == EXIT_CONFIG
    assert "engine.max_batch_size" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_config_of_broken_json_exits_2_with_line_and_column(tmp_path, capsys):
    path = tmp_path / "engine.json"
    path.write_text('{"grpc": {"port": 1,}}', encoding="utf-8")
    assert main(["check-config", str(path)]) == EXIT_CONFIG
    assert "line 1 column" in capsys.readouterr().err


def test_check_config_of_a_missing_file_exits_2(tmp_path, capsys):
    assert main(["check-config", str(tmp_path / "missing.json")]) == EXIT_CONFIG
    assert "does not exist" in capsys.readouterr().err


def test_check_config_in_process_returns_the_exit_code(tmp_path, capsys):
    assert main(["check-config", str(config_file(tmp_path, {}))]) == 0
    assert main(["check-config", str(config_file(tmp_path, {"log_level": "LOUD"}))]) == EXIT_CONFIG
    assert "log_level" in capsys.readouterr().err


# -- engine flags -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("flag", "value", "named"), [
    ("--grpc_port", "70000", "--grpc_port"),
    ("--grpc-port", "70000", "--grpc_port"),
    ("--console_port", "-1", "--console_port"),
    ("--console-port", "-1", "--console_port"),
    ("--log_level", "chatty", "--log_level"),
    ("--log-level", "chatty", "--log_level"),
])
def test_bad_flag_value_exits_2_before_starting_in_either_spelling(tmp_path, capsys, flag, value, named):
    path = config_file(tmp_path, engine_config_data(tmp_path / "data"))
    assert main(["--config", str(path), flag, value]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert named in err
    assert not (tmp_path / "data").exists()  # nothing was started or created


def test_run_subcommand_takes_the_same_flags(tmp_path, capsys):
    path = config_file(tmp_path, engine_config_data(tmp_path / "data"))
    assert main(["run", "--config", str(path), "--grpc-port", "99999"]) == EXIT_CONFIG
    assert "--grpc_port" in capsys.readouterr().err


def test_non_numeric_port_is_an_argument_error():
    proc = run_cli("--grpc_port", "fast")
    assert proc.returncode == 2
    assert "--grpc_port" in proc.stderr


def test_engine_with_an_invalid_config_exits_2(tmp_path):
    proc = run_cli("--config", str(config_file(tmp_path, {"console": {"host": "0.0.0.0"}})))
    assert proc.returncode == EXIT_CONFIG
    assert "console.token" in proc.stderr
    assert "EDGEBOX READY" not in proc.stdout


async def test_dashed_flags_reach_the_running_engine(aio, tmp_path):  # noqa: F811 - fixture
    plugin_dir = tmp_path / "more-plugins"
    write_plugin(plugin_dir, "broken", 'raise ImportError("no such thing")\n')
    config = config_file(tmp_path, {"console": {"enabled": False}, "data_dir": str(tmp_path / "file-data")})
    engine = EngineProcess(config, "--data-dir", str(tmp_path / "flag-data"), "--plugin-dir", str(plugin_dir),
                           "--log-level", "debug", "--grpc-host", "127.0.0.1")
    with engine:
        assert engine.ready_line.startswith("EDGEBOX READY grpc=127.0.0.1:")  # the port the OS chose
        assert engine.port > 0 and engine.ready_line.endswith(" console=-")
        with connect(aio, engine.host, engine.port) as client:
            health = await client.health()
            assert health.status == pb.HealthStatus.SERVING
            assert any(e.startswith("broken: ") for e in health.plugin_errors)  # --plugin-dir was used
        engine.send_signal()
        assert await engine.wait_async() == 0, engine.log()
    assert (tmp_path / "flag-data" / "edgebox.sqlite3").is_file()  # --data-dir won over the file
    assert not (tmp_path / "file-data").exists()
    assert " DEBUG " in engine.log_path.read_text()  # --log-level debug


def test_ctl_against_a_dead_target_exits_1_with_a_message():
    proc = run_cli("ctl", "--target", "127.0.0.1:1", "health")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_engine_on_a_port_in_use_exits_1_with_one_clear_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = config_file(tmp_path, engine_config_data(tmp_path / "data"))
        proc = run_cli("--config", str(config), "--grpc_port", str(port))
    assert proc.returncode == 1
    assert "cannot start" in proc.stderr and "address already in use" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "EDGEBOX READY" not in proc.stdout
