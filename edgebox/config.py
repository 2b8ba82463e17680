"""Engine configuration: the JSON file and CLI overrides, validated once into frozen dataclasses.

Every later module receives these typed objects and trusts them. A bad file raises ConfigError naming the key
path (e.g. "engine.max_batch_size") and the reason; nothing here starts or opens anything.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgebox.errors import ConfigError, EdgeboxError, InvalidRequest
from edgebox.limits import check_id

DEFAULT_GRPC_PORT = 50051
DEFAULT_CONSOLE_PORT = 8080
LOOPBACK = "127.0.0.1"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
BACKEND_CHOICES = (
    "auto",
    "onnxruntime-cuda",
    "onnxruntime-tensorrt",
    "onnxruntime-cpu",
    "openvino-cpu",
    "openvino-gpu",
    "openvino-npu",
)
# engine.openvino_precision: "auto" is OpenVINO's own choice per device (bf16 on CPUs with AMX or AVX-512 BF16,
# f16 on GPUs and NPUs, f32 elsewhere); "f32" asks every device for full precision.
OPENVINO_PRECISIONS = ("auto", "f32")
# engine.camera_decoding: "process" decodes every camera in one child process (edgebox/cameras/decoder_process.py),
# "threads" in a reader thread per camera inside the engine.
CAMERA_DECODING = ("process", "threads")


@dataclass(frozen=True)
class TlsConfig:
    """Server certificate and key; with client_ca set, clients must present a certificate from that CA (mTLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass(frozen=True)
class GrpcConfig:
    host: str = LOOPBACK
    port: int = DEFAULT_GRPC_PORT
    # Seconds that in-flight calls get to finish after SIGTERM/SIGINT before they are cancelled.
    drain_timeout_s: float = 30.0
    max_message_bytes: int = 64 * 1024 * 1024
    # Request bytes held at once over all calls (edgebox.api.request_budget); at least max_message_bytes.
    max_buffered_request_bytes: int = 256 * 1024 * 1024
    tls: TlsConfig | None = None


@dataclass(frozen=True)
class ConsoleConfig:
    enabled: bool = True
    host: str = LOOPBACK
    port: int = DEFAULT_CONSOLE_PORT
    # Required when host is not loopback: browsers send it as a bearer token or the basic-auth password.
    token: str = ""


@dataclass(frozen=True)
class EngineConfig:
    backend: str = "auto"
    max_batch_size: int = 8
    # Latency cap: a partial batch waits at most this long for more frames (about one frame interval at 10 fps).
    max_queue_delay_ms: float = 100.0
    # Frames waiting per model queue; beyond it RPC callers get RESOURCE_EXHAUSTED, cameras drop their oldest.
    queue_capacity: int = 64
    inference_timeout_s: float = 10.0
    # Threads each backend may use; 0 = let the backend decide.
    threads: int = 0
    # Batches a CPU backend runs at once, each on its share of the threads; 0 = 2 where there are 2 cores or more.
    cpu_executions: int = 0
    # onnxruntime-tensorrt only: build engines in FP16 (faster on most GPUs, outputs differ slightly from FP32).
    tensorrt_fp16: bool = False
    # OpenVINO's inference precision (OPENVINO_PRECISIONS): "auto" lets it run reduced precision where the device
    # is faster with it (scores then differ from onnxruntime's FP32 by up to ~0.01); "f32" matches onnxruntime.
    openvino_precision: str = "auto"
    # Cameras this node accepts; AddCamera beyond it gets RESOURCE_EXHAUSTED.
    max_cameras: int = 64
    # AddCamera refuses (RESOURCE_EXHAUSTED) a camera that would take decoding past this fraction of the CPU
    # cores, or a model queue past this fraction of its execution time (edgebox.admission); 0 = no check.
    admission_max_load: float = 0.9
    # Nice increment for the libraries' own native threads (the model backends' compute pools) and for the camera
    # decoding process (camera_decoding "process"), never for the engine's Python threads, so that gRPC and trio get
    # a core first when the model and the decoding fill them; 0 = off.
    compute_thread_nice: int = 10
    # Where cameras are decoded (CAMERA_DECODING): in a child process at compute_thread_nice, where a crash in FFmpeg
    # ends that process, not the engine, and decoding yields the cores to the engine's threads (HealthCheck's p99
    # under camera load), at ~90 MB more memory with 50 cameras (PSS); or in reader threads of the engine.
    camera_decoding: str = "process"


@dataclass(frozen=True)
class ManagerConfig:
    """Link to a management system that this node registers with (edgebox acting as the daemon)."""

    address: str = ""
    node_id: str = ""
    heartbeat_interval_s: float = 5.0
    metrics_interval_s: float = 15.0
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None


@dataclass(frozen=True)
class ProvisionedWorkflow:
    spec: Mapping[str, Any]


@dataclass(frozen=True)
class ProvisionedCamera:
    camera_id: str
    url: str
    workflow_id: str
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProvisionConfig:
    """Workflows and cameras created on the first start with an empty store (never re-created after removal)."""

    workflows: tuple[ProvisionedWorkflow, ...] = ()
    cameras: tuple[ProvisionedCamera, ...] = ()


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path("var/edgebox")
    plugin_dir: Path | None = None
    log_level: str = "INFO"
    grpc: GrpcConfig = GrpcConfig()
    console: ConsoleConfig = ConsoleConfig()
    engine: EngineConfig = EngineConfig()
    manager: ManagerConfig = ManagerConfig()
    provision: ProvisionConfig = ProvisionConfig()

    @property
    def log_level_number(self) -> int:
        return logging.getLevelName(self.log_level)


class _Section:
    """Reads one JSON object, checking types and ranges and remembering which keys were used."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, f"must be a JSON object, got {_json_type(data)}")
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any,
            check: Callable[[Any], str | None] | None = None) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(_TYPE_NAMES[k] for k in kinds)
            raise ConfigError(self.key_path(key), f"must be {names}, got {_json_type(value)} {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(self.key_path(key), "must be a finite number")
        if check is not None and (problem := check(value)) is not None:
            raise ConfigError(self.key_path(key), f"{problem}, got {value!r}")
        return value

    def section(self, key: str) -> _Section | None:
        self.used.add(key)
        if key not in self.data:
            return None
        return _Section(self.data[key], self.key_path(key))

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            known = ", ".join(sorted(self.used))
            raise ConfigError(self.key_path(unknown[0]), f"unknown key (known keys here: {known})")


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "an object"}


def _json_type(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _in_range(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be between {lo:g} and {hi:g}"


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _non_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def _parse_tls(sec: _Section, base: Path) -> TlsConfig:
    cert = sec.get("cert_file", str, "", _non_empty)
    key = sec.get("key_file", str, "", _non_empty)
    ca = sec.get("client_ca_file", str, "")
    sec.finish()
    if not cert or not key:
        raise ConfigError(sec.path, "needs both cert_file and key_file")
    return TlsConfig(_resolve(base, cert), _resolve(base, key), _resolve(base, ca) if ca else None)


def _parse_grpc(sec: _Section | None, base: Path) -> GrpcConfig:
    if sec is None:
        return GrpcConfig()
    d = GrpcConfig()
    host = sec.get("host", str, d.host, _non_empty)
    port = sec.get("port", int, d.port, _in_range(0, 65535))
    drain = sec.get("drain_timeout_s", float, d.drain_timeout_s, _in_range(0, 3600))
    max_msg = sec.get("max_message_bytes", int, d.max_message_bytes, _in_range(1024, 1 << 30))
    max_buffered = sec.get("max_buffered_request_bytes", int, max(d.max_buffered_request_bytes, max_msg),
                           _in_range(1024, 1 << 40))
    if max_buffered < max_msg:
        raise ConfigError(sec.key_path("max_buffered_request_bytes"),
                          f"must be at least grpc.max_message_bytes ({max_msg}), got {max_buffered}")
    tls_sec = sec.section("tls")
    tls = _parse_tls(tls_sec, base) if tls_sec is not None else None
    sec.finish()
    return GrpcConfig(host, port, drain, max_msg, max_buffered, tls)


def _parse_console(sec: _Section | None) -> ConsoleConfig:
    if sec is None:
        return ConsoleConfig()
    d = ConsoleConfig()
    cfg = ConsoleConfig(
        enabled=sec.get("enabled", bool, d.enabled),
        host=sec.get("host", str, d.host, _non_empty),
        port=sec.get("port", int, d.port, _in_range(0, 65535)),
        token=sec.get("token", str, d.token),
    )
    sec.finish()
    if cfg.enabled and not is_loopback(cfg.host) and not cfg.token:
        raise ConfigError(sec.key_path("token"),
                          f"is required when the console listens beyond loopback (host {cfg.host!r})")
    return cfg


def _parse_engine(sec: _Section | None) -> EngineConfig:
    if sec is None:
        return EngineConfig()
    d = EngineConfig()
    cfg = EngineConfig(
        backend=sec.get("backend", str, d.backend, _one_of(BACKEND_CHOICES)),
        max_batch_size=sec.get("max_batch_size", int, d.max_batch_size, _in_range(1, 64)),
        max_queue_delay_ms=sec.get("max_queue_delay_ms", float, d.max_queue_delay_ms, _in_range(0, 5000)),
        queue_capacity=sec.get("queue_capacity", int, d.queue_capacity, _in_range(1, 100_000)),
        inference_timeout_s=sec.get("inference_timeout_s", float, d.inference_timeout_s, _in_range(0.01, 600)),
        threads=sec.get("threads", int, d.threads, _in_range(0, 256)),
        cpu_executions=sec.get("cpu_executions", int, d.cpu_executions, _in_range(0, 64)),
        tensorrt_fp16=sec.get("tensorrt_fp16", bool, d.tensorrt_fp16),
        openvino_precision=sec.get("openvino_precision", str, d.openvino_precision, _one_of(OPENVINO_PRECISIONS)),
        max_cameras=sec.get("max_cameras", int, d.max_cameras, _in_range(0, 10_000)),
        admission_max_load=sec.get("admission_max_load", float, d.admission_max_load, _in_range(0, 10)),
        compute_thread_nice=sec.get("compute_thread_nice", int, d.compute_thread_nice, _in_range(0, 19)),
        camera_decoding=sec.get("camera_decoding", str, d.camera_decoding, _one_of(CAMERA_DECODING)),
    )
    sec.finish()
    return cfg


def _parse_manager(sec: _Section | None, base: Path) -> ManagerConfig:
    if sec is None:
        return ManagerConfig()
    d = ManagerConfig()

    def opt_path(key: str) -> Path | None:
        value = sec.get(key, str, "")
        return _resolve(base, value) if value else None

    cfg = ManagerConfig(
        address=sec.get("address", str, d.address),
        node_id=sec.get("node_id", str, d.node_id),
        heartbeat_interval_s=sec.get("heartbeat_interval_s", float, d.heartbeat_interval_s, _in_range(0.1, 3600)),
        metrics_interval_s=sec.get("metrics_interval_s", float, d.metrics_interval_s, _in_range(0.1, 3600)),
        tls_ca_file=opt_path("tls_ca_file"),
        tls_cert_file=opt_path("tls_cert_file"),
        tls_key_file=opt_path("tls_key_file"),
    )
    sec.finish()
    return cfg


def _parse_provision(sec: _Section | None) -> ProvisionConfig:
    if sec is None:
        return ProvisionConfig()
    workflows = []
    for i, item in enumerate(sec.get("workflows", list, [])):
        w = _Section(item, f"{sec.path}.workflows[{i}]")
        if not isinstance(w.data.get("workflow_id"), str):
            raise ConfigError(w.key_path("workflow_id"), "is required and must be a string")
        _check_provisioned(w.path, _validate_workflow_spec, w.data)
        workflows.append(ProvisionedWorkflow(dict(w.data)))
    cameras = []
    for i, item in enumerate(sec.get("cameras", list, [])):
        c = _Section(item, f"{sec.path}.cameras[{i}]")
        options = c.get("config", dict, {})
        bad = [k for k, v in options.items() if not isinstance(v, str)]
        if bad:
            raise ConfigError(c.key_path(f"config.{bad[0]}"), "must be a string (camera options are strings)")
        cameras.append(ProvisionedCamera(
            camera_id=c.get("camera_id", str, None, _non_empty) or _missing(c, "camera_id"),
            url=c.get("url", str, None, _non_empty) or _missing(c, "url"),
            workflow_id=c.get("workflow_id", str, None, _non_empty) or _missing(c, "workflow_id"),
            options=dict(options),
        ))
        c.finish()
        _check_provisioned(c.path, _validate_camera, cameras[-1])
    sec.finish()
    return ProvisionConfig(tuple(workflows), tuple(cameras))


def _missing(sec: _Section, key: str) -> Any:
    raise ConfigError(sec.key_path(key), "is required")


def _check_provisioned(path: str, validate: Callable[[Any], None], value: Any) -> None:
    """Provisioned items get the checks their RPCs apply (only plugin names wait for the engine)."""
    try:
        validate(value)
    except EdgeboxError as exc:
        raise ConfigError(path, exc.message) from None


def _validate_workflow_spec(data: Mapping[str, Any]) -> None:
    from edgebox.workflows.spec import parse_workflow_spec  # it imports this module: import late

    parse_workflow_spec(data)


def _validate_camera(camera: ProvisionedCamera) -> None:
    from edgebox.cameras import parse_camera_options, validate_source_url  # heavy (cv2): only when used

    for kind, value in (("camera_id", camera.camera_id), ("workflow_id", camera.workflow_id)):
        if problem := check_id(kind, value):
            raise InvalidRequest(problem)
    validate_source_url(camera.url)
    parse_camera_options(camera.options)


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def parse_config(data: Any, base_dir: Path) -> Config:
    """Validate a decoded JSON document; relative paths resolve against base_dir (the file's folder)."""
    root = _Section(data, "")
    d = Config()
    data_dir = root.get("data_dir", str, str(d.data_dir), _non_empty)
    plugin_dir = root.get("plugin_dir", str, "")
    cfg = Config(
        data_dir=_resolve(base_dir, data_dir),
        plugin_dir=_resolve(base_dir, plugin_dir) if plugin_dir else None,
        log_level=root.get("log_level", str, d.log_level, lambda v: _one_of(LOG_LEVELS)(v.upper())).upper(),
        grpc=_parse_grpc(root.section("grpc"), base_dir),
        console=_parse_console(root.section("console")),
        engine=_parse_engine(root.section("engine")),
        manager=_parse_manager(root.section("manager"), base_dir),
        provision=_parse_provision(root.section("provision")),
    )
    root.finish()
    return cfg


def load_config(path: Path | None) -> Config:
    """Read and validate a config file; None gives the defaults (relative to the working directory)."""
    if path is None:
        return parse_config({}, Path.cwd())
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"cannot read config file {str(path)!r}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError("", f"{path}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    return parse_config(data, path.resolve().parent)


def with_overrides(cfg: Config, *, grpc_port: int | None = None, grpc_host: str | None = None,
                   plugin_dir: Path | None = None, log_level: str | None = None,
                   data_dir: Path | None = None, console_port: int | None = None) -> Config:
    """Apply command-line flags over the file; they are validated with the same rules."""
    grpc = cfg.grpc
    if grpc_port is not None:
        if not 0 <= grpc_port <= 65535:
            raise ConfigError("--grpc_port", f"must be between 0 and 65535, got {grpc_port}")
        grpc = dataclasses.replace(grpc, port=grpc_port)
    if grpc_host is not None:
        if not grpc_host.strip():
            raise ConfigError("--grpc_host", "must not be empty")
        grpc = dataclasses.replace(grpc, host=grpc_host)
    console = cfg.console
    if console_port is not None:
        if not 0 <= console_port <= 65535:
            raise ConfigError("--console_port", f"must be between 0 and 65535, got {console_port}")
        console = dataclasses.replace(console, port=console_port)
    if log_level is not None and log_level.upper() not in LOG_LEVELS:
        raise ConfigError("--log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    return dataclasses.replace(
        cfg,
        grpc=grpc,
        console=console,
        plugin_dir=plugin_dir if plugin_dir is not None else cfg.plugin_dir,
        log_level=log_level.upper() if log_level is not None else cfg.log_level,
        data_dir=data_dir if data_dir is not None else cfg.data_dir,
    )
