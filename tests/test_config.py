"""The config file: every section validated into typed values, every mistake a ConfigError naming its key path,
relative paths resolved against the file's folder, and command-line overrides checked by the same rules.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgebox.config import (
    DEFAULT_CONSOLE_PORT,
    DEFAULT_GRPC_PORT,
    Config,
    load_config,
    parse_config,
    with_overrides,
)
from edgebox.errors import ConfigError

BASE = Path("/etc/edgebox")


def parse(data) -> Config:
    return parse_config(data, BASE)


def error_of(data) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(data)
    return info.value


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# -- defaults and good values -------------------------------------------------------------------------------------
def test_empty_file_gives_the_documented_defaults():
    cfg = parse({})
    assert cfg.grpc.host == "127.0.0.1" and cfg.grpc.port == DEFAULT_GRPC_PORT
    assert cfg.console.enabled and cfg.console.host == "127.0.0.1" and cfg.console.port == DEFAULT_CONSOLE_PORT
    assert cfg.engine.backend == "auto"
    assert cfg.engine.max_batch_size == 8
    assert cfg.log_level == "INFO"
    assert cfg.data_dir == BASE / "var" / "edgebox"
    assert cfg.plugin_dir is None
    assert cfg.grpc.tls is None
    assert cfg.provision.workflows == () and cfg.provision.cameras == ()


def test_the_buffered_request_budget_defaults_to_256_mib_or_one_largest_message():
    assert parse({}).grpc.max_buffered_request_bytes == 256 * 1024 * 1024
    assert parse({"grpc": {"max_message_bytes": 512 * 1024 * 1024}}).grpc.max_buffered_request_bytes == 512 * 1024 * 1024


def test_no_config_file_gives_defaults_relative_to_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert load_config(None).data_dir == tmp_path / "var" / "edgebox"


def test_every_section_accepts_good_values():
    cfg = parse({
        "data_dir": "/srv/state", "plugin_dir": "/opt/plugins", "log_level": "debug",
        "grpc": {"host": "0.0.0.0", "port": 0, "drain_timeout_s": 5, "max_message_bytes": 4096,
                 "max_buffered_request_bytes": 8192,
                 "tls": {"cert_file": "/c.pem", "key_file": "/k.pem", "client_ca_file": "/ca.pem"}},
        "console": {"enabled": True, "host": "0.0.0.0", "port": 9000, "token": "s3cret"},
        "engine": {"backend": "openvino-cpu", "max_batch_size": 16, "max_queue_delay_ms": 20, "queue_capacity": 10,
                   "inference_timeout_s": 2.5, "threads": 2, "cpu_executions": 3, "max_cameras": 4,
                   "compute_thread_nice": 5, "openvino_precision": "f32"},
        "manager": {"address": "mgr:443", "node_id": "n1", "heartbeat_interval_s": 1, "metrics_interval_s": 2},
        "provision": {"workflows": [{"workflow_id": "people", "plugins": ["person"]}],
                      "cameras": [{"camera_id": "c1", "url": "demo://person", "workflow_id": "people",
                                   "config": {"fps": "2"}}]},
    })
    assert cfg.log_level == "DEBUG"
    assert cfg.grpc.drain_timeout_s == 5.0 and isinstance(cfg.grpc.drain_timeout_s, float)
    assert cfg.grpc.tls is not None and cfg.grpc.tls.client_ca_file == Path("/ca.pem")
    assert cfg.grpc.max_buffered_request_bytes == 8192
    assert cfg.console.token == "s3cret"
    assert cfg.engine.max_queue_delay_ms == 20.0
    assert cfg.engine.max_cameras == 4
    assert cfg.engine.cpu_executions == 3
    assert cfg.engine.compute_thread_nice == 5
    assert cfg.engine.openvino_precision == "f32"
    assert cfg.manager.heartbeat_interval_s == 1.0
    assert cfg.provision.workflows[0].spec["workflow_id"] == "people"
    assert cfg.provision.cameras[0].options == {"fps": "2"}


# -- each section's mistakes --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("data", "path", "words"), [
    # root
    ([], "", "JSON object"),
    ({"data_dir": ""}, "data_dir", "empty"),
    ({"data_dir": 5}, "data_dir", "string"),
    ({"log_level": "LOUD"}, "log_level", "one of"),
    ({"colour": "blue"}, "colour", "unknown key"),
    # grpc
    ({"grpc": []}, "grpc", "JSON object"),
    ({"grpc": {"port": 70000}}, "grpc.port", "between 0 and 65535"),
    ({"grpc": {"port": -1}}, "grpc.port", "between"),
    ({"grpc": {"port": "50051"}}, "grpc.port", "integer"),
    ({"grpc": {"port": True}}, "grpc.port", "integer"),
    ({"grpc": {"port": 50051.0}}, "grpc.port", "integer"),
    ({"grpc": {"host": " "}}, "grpc.host", "empty"),
    ({"grpc": {"drain_timeout_s": -1}}, "grpc.drain_timeout_s", "between"),
    ({"grpc": {"drain_timeout_s": float("nan")}}, "grpc.drain_timeout_s", "finite"),
    ({"grpc": {"max_message_bytes": 100}}, "grpc.max_message_bytes", "between"),
    ({"grpc": {"max_message_bytes": 4096, "max_buffered_request_bytes": 2048}}, "grpc.max_buffered_request_bytes",
     "at least grpc.max_message_bytes (4096)"),
    ({"grpc": {"tls": {"cert_file": "/c.pem"}}}, "grpc.tls", "key_file"),
    ({"grpc": {"tls": {"cert_file": "/c", "key_file": "/k", "ca": "/x"}}}, "grpc.tls.ca", "unknown key"),
    ({"grpc": {"prot": 1}}, "grpc.prot", "unknown key"),
    # console
    ({"console": {"enabled": "yes"}}, "console.enabled", "true or false"),
    ({"console": {"port": 65536}}, "console.port", "between"),
    ({"console": {"host": "0.0.0.0"}}, "console.token", "required"),
    ({"console": {"host": "192.168.1.10", "token": ""}}, "console.token", "required"),
    ({"console": {"tokn": "x"}}, "console.tokn", "unknown key"),
    # engine
    ({"engine": {"backend": "tpu"}}, "engine.backend", "one of"),
    ({"engine": {"openvino_precision": "bf16"}}, "engine.openvino_precision", "one of auto, f32"),
    ({"engine": {"max_batch_size": 0}}, "engine.max_batch_size", "between 1 and 64"),
    ({"engine": {"max_batch_size": 65}}, "engine.max_batch_size", "between"),
    ({"engine": {"max_queue_delay_ms": 5001}}, "engine.max_queue_delay_ms", "between"),
    ({"engine": {"queue_capacity": 0}}, "engine.queue_capacity", "between"),
    ({"engine": {"inference_timeout_s": 0}}, "engine.inference_timeout_s", "between"),
    ({"engine": {"threads": -1}}, "engine.threads", "between"),
    ({"engine": {"cpu_executions": 65}}, "engine.cpu_executions", "between 0 and 64"),
    ({"engine": {"max_cameras": -1}}, "engine.max_cameras", "between"),
    ({"engine": {"compute_thread_nice": 20}}, "engine.compute_thread_nice", "between 0 and 19"),
    ({"engine": {"compute_thread_nice": -5}}, "engine.compute_thread_nice", "between"),
    ({"engine": {"max_cameras": "4"}}, "engine.max_cameras", "integer"),
    ({"engine": {"batch": 4}}, "engine.batch", "unknown key"),
    # manager
    ({"manager": {"address": 5}}, "manager.address", "string"),
    ({"manager": {"heartbeat_interval_s": 0}}, "manager.heartbeat_interval_s", "between"),
    ({"manager": {"metrics_interval_s": "fast"}}, "manager.metrics_interval_s", "number"),
    ({"manager": {"url": "x"}}, "manager.url", "unknown key"),
    # provision
    ({"provision": {"workflows": {}}}, "provision.workflows", "list"),
    ({"provision": {"workflows": ["people"]}}, "provision.workflows[0]", "JSON object"),
    ({"provision": {"workflows": [{"plugins": ["person"]}]}}, "provision.workflows[0].workflow_id", "required"),
    ({"provision": {"cameras": [{"url": "demo://person", "workflow_id": "w"}]}},
     "provision.cameras[0].camera_id", "required"),
    ({"provision": {"cameras": [{"camera_id": "c", "workflow_id": "w"}]}}, "provision.cameras[0].url", "required"),
    ({"provision": {"cameras": [{"camera_id": "c", "url": "demo://person", "workflow_id": "w",
                                 "config": {"fps": 2}}]}}, "provision.cameras[0].config.fps", "string"),
    ({"provision": {"cameras": [{"camera_id": "c", "url": "demo://person", "workflow_id": "w", "fps": "2"}]}},
     "provision.cameras[0].fps", "unknown key"),
    ({"provision": {"devices": []}}, "provision.devices", "unknown key"),
])
def test_bad_value_raises_config_error_with_its_key_path(data, path, words):
    exc = error_of(data)
    assert exc.path == path
    assert words in exc.reason
    assert str(exc).startswith(f"{path or '<root>'}: ")


def test_unknown_key_error_lists_the_known_keys():
    exc = error_of({"engine": {"max_batch": 4}})
    assert "max_batch_size" in exc.reason


def test_type_error_says_what_was_given():
    exc = error_of({"grpc": {"port": "50051"}})
    assert "got string '50051'" in exc.reason


def test_console_beyond_loopback_is_allowed_with_a_token_or_when_disabled():
    assert parse({"console": {"host": "0.0.0.0", "token": "t"}}).console.token == "t"
    assert not parse({"console": {"host": "0.0.0.0", "enabled": False}}).console.enabled
    assert parse({"console": {"host": "localhost"}}).console.host == "localhost"
    assert parse({"console": {"host": "::1"}}).console.host == "::1"


@pytest.mark.parametrize(("spec", "words"), [
    ({"workflow_id": "bad id", "plugins": ["person"]}, "workflow_id"),
    ({"workflow_id": "w", "plugins": []}, "plugins"),
    ({"workflow_id": "w", "plugins": ["person"], "min_score": 7}, "min_score"),
    ({"workflow_id": "w", "plugins": ["person"], "zones": [{"name": "z", "points": []}]}, "zones[0].points"),
    ({"workflow_id": "w", "plugins": ["person"], "colour": "red"}, "colour"),
])
def test_provisioned_workflow_is_validated_like_deploy_workflow(spec, words):
    exc = error_of({"provision": {"workflows": [spec]}})
    assert exc.path.startswith("provision.workflows[0]")
    assert words in str(exc)


@pytest.mark.parametrize(("camera", "words"), [
    ({"camera_id": "bad id", "url": "demo://person", "workflow_id": "w"}, "camera_id"),
    ({"camera_id": "c", "url": "ftp://x/y", "workflow_id": "w"}, "scheme"),
    ({"camera_id": "c", "url": "demo://person", "workflow_id": "w", "config": {"fps": "999"}}, "fps"),
    ({"camera_id": "c", "url": "demo://person", "workflow_id": "bad id"}, "workflow_id"),
])
def test_provisioned_camera_is_validated_like_add_camera(camera, words):
    exc = error_of({"provision": {"cameras": [camera]}})
    assert exc.path.startswith("provision.cameras[0]")
    assert words in str(exc)


# -- files and paths ----------------------------------------------------------------------------------------------
def test_relative_paths_resolve_against_the_config_files_folder(tmp_path, monkeypatch):
    folder = tmp_path / "conf"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    cfg = load_config(write(folder / "engine.json", {
        "data_dir": "state", "plugin_dir": "../plugins",
        "grpc": {"tls": {"cert_file": "tls/cert.pem", "key_file": "tls/key.pem", "client_ca_file": "ca.pem"}},
        "manager": {"tls_ca_file": "mgr/ca.pem"},
    }))
    assert cfg.data_dir == folder / "state"
    assert cfg.plugin_dir == folder / "../plugins"
    assert cfg.grpc.tls is not None
    assert cfg.grpc.tls.cert_file == folder / "tls/cert.pem"
    assert cfg.grpc.tls.key_file == folder / "tls/key.pem"
    assert cfg.grpc.tls.client_ca_file == folder / "ca.pem"
    assert cfg.manager.tls_ca_file == folder / "mgr/ca.pem"


def test_absolute_paths_are_kept(tmp_path):
    cfg = load_config(write(tmp_path / "engine.json", {"data_dir": "/var/lib/edgebox"}))
    assert cfg.data_dir == Path("/var/lib/edgebox")


def test_invalid_json_error_gives_line_and_column(tmp_path):
    path = tmp_path / "engine.json"
    path.write_text('{\n  "grpc": {\n    "port": 50051,\n  }\n}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "line 4 column 3" in str(info.value)
    assert str(path) in str(info.value)


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.json")


def test_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "engine.json"
    path.write_bytes(b'{"data_dir": "\xff\xfe"}')
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(path)


# -- command-line overrides ---------------------------------------------------------------------------------------
def test_overrides_replace_file_values():
    cfg = with_overrides(parse({"grpc": {"port": 1}}), grpc_port=0, grpc_host="0.0.0.0", log_level="debug",
                         data_dir=Path("/d"), plugin_dir=Path("/p"), console_port=0)
    assert (cfg.grpc.port, cfg.grpc.host, cfg.log_level) == (0, "0.0.0.0", "DEBUG")
    assert (cfg.data_dir, cfg.plugin_dir, cfg.console.port) == (Path("/d"), Path("/p"), 0)


def test_no_overrides_keep_the_file():
    cfg = parse({"grpc": {"port": 1234}, "log_level": "WARNING"})
    assert with_overrides(cfg) == cfg


@pytest.mark.parametrize(("kwargs", "path"), [
    ({"grpc_port": 70000}, "--grpc_port"),
    ({"grpc_port": -1}, "--grpc_port"),
    ({"console_port": 65536}, "--console_port"),
    ({"log_level": "chatty"}, "--log_level"),
    ({"grpc_host": ""}, "--grpc_host"),
])
def test_bad_override_raises_config_error_naming_the_flag(kwargs, path):
    with pytest.raises(ConfigError) as info:
        with_overrides(parse({}), **kwargs)
    assert info.value.path == path
