"""Server and engine settings, each declared once.

A setting is a field of :class:`EngineConfig` (what the retrieval engine needs) or of
:class:`ServerConfig` (which extends it with what the gRPC server needs), declared with
:func:`setting`: its default, its help text and its allowed range or choices. From that
one declaration come the ``rasst serve`` flags (:func:`add_flags`), the environment
variables (``RASST_<FIELD>``), the TOML keys, the validation (:func:`validate_config`)
and the precedence (:func:`load_config`). Adding a setting touches one place.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path

PRECISIONS = ("int8", "float32")  # CPU arithmetic of the speech head and exact search
# Rows; beyond this HNSW keeps CPU search fast. A 100K-entry glossary has more rows than
# entries (aliases, second pronunciations) and stays exact: HNSW lost 0.013 of held-out
# Recall@1 at 104K rows and took ~25 s to build; exact search costs ~5 ms of p99 under 8
# real-time streams on 2 cores (BENCHMARKS.md).
EXACT_MAX_DEFAULT = 250_000
DEVICES = ("auto", "cpu", "cuda")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ENV_PREFIX = "RASST_"


def setting(
    default,
    help: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[str, ...] | None = None,
    note: str = "",
) -> Field:
    """A declared setting: ``lo``..``hi`` bound numbers, ``choices`` strings; ``note`` says
    what a special value means (e.g. "0 = auto") in the validation message."""
    return field(
        default=default,
        metadata={"help": help, "lo": lo, "hi": hi, "choices": choices, "note": note},
    )


@dataclass(frozen=True)
class EngineConfig:
    """What the engine needs: batching, arithmetic, placement, search and rescoring."""

    max_batch_windows: int = setting(
        2048, "most windows (all sessions) in one encoder batch", lo=1, hi=1_000_000
    )
    # On a CPU waiting only adds latency (two clips batched cost as much as one after the
    # other); on a GPU a wait of a few ms buys larger, cheaper batches.
    max_wait_ms: float = setting(
        0.0,
        "ms a worker waits to fill a batch (0 = greedy: what queued while it was busy)",
        lo=0,
        hi=1000,
    )
    exact_max: int = setting(
        EXACT_MAX_DEFAULT,
        "rows above which a glossary uses HNSW on a CPU (a GPU searches exactly up to 5M)",
        lo=1,
        hi=1_000_000_000,
    )
    precision: str = setting(
        "int8",
        "CPU arithmetic of the speech head and exact search (int8: ~2x faster each)",
        choices=PRECISIONS,
    )
    rescore: bool = setting(
        True,
        "rescore candidates with the model's second stage (phone alignment) when it has one; "
        "off serves cosine scores, whose thresholds each request must then set",
    )
    rescore_candidates: int = setting(
        256,
        "most candidates per request the second stage aligns (at most the model's rescore_top)",
        lo=1,
        hi=1024,
    )
    threads: int = setting(1, "torch / CTranslate2 threads of each encoder worker", lo=1, hi=256)
    split_search: bool = setting(
        True,
        "split an exact int8 search over the cores of encoder workers idle at the time",
    )
    workers: int = setting(
        0,
        "encoder worker threads (0 = auto: one on a GPU, one per core on a CPU, at most 4)",
        lo=0,
        hi=64,
        note="0 = auto",
    )
    device: str = setting(
        "auto",
        "where the speech front-end runs (auto: CUDA when CTranslate2 or torch sees a GPU)",
        choices=DEVICES,
    )
    # A window over speech that is no glossary term still has near neighbours; letting only
    # its best few count keeps those from flooding the hints.
    window_top: int = setting(2, "entries each window may vote for", lo=1, hi=32)


@dataclass(frozen=True)
class ServerConfig(EngineConfig):
    """Every ``rasst serve`` setting: the engine's and the server's own."""

    address: str = setting("127.0.0.1:50051", "host:port to listen on (port 0 picks a free one)")
    checkpoint: str = setting(
        "default", "checkpoint directory; 'default' = the shipped one, 'none' = no model"
    )
    data_dir: str = setting("var/rasst", "where glossaries and the admin token are persisted")
    admin_token: str = setting(
        "", "bearer token for admin calls (unset: read or generate {data_dir}/admin_token)"
    )
    tls_cert: str = setting("", "PEM certificate for TLS (with tls_key)")
    tls_key: str = setting("", "PEM private key for TLS (with tls_cert)")
    demo_glossary: bool = setting(True, "load the demo glossary 'demo' when the store has none")
    metrics_port: int = setting(
        0, "Prometheus /metrics port (0 = off)", lo=0, hi=65535, note="0 = off"
    )
    # A 60 s f32le clip is ~3.8 MB.
    max_message_bytes: int = setting(
        8 * 1024 * 1024, "largest request or response message in bytes", lo=1024, hi=256 * 1024**2
    )
    drain_s: float = setting(5.0, "seconds given to in-flight calls on SIGTERM", lo=0, hi=3600)
    # A translator streams audio continuously (silence is audio too), so a stream with no
    # message for this long has been abandoned by its caller.
    idle_timeout_s: float = setting(
        60.0, "seconds a stream may send nothing before it is closed", lo=1, hi=86400
    )
    log_level: str = setting("INFO", "log level", choices=LOG_LEVELS)
    json_logs: bool = setting(False, "one JSON object per log line")
    # Ray Serve: this process terminates the gRPC calls and sessions; replicas (anywhere in
    # the Ray cluster) encode and search. The data_dir and checkpoint must be readable on
    # every node (a shared directory).
    cluster: str = setting(
        "",
        "run the encoders as Ray Serve replicas: 'auto' (join the local Ray instance or start "
        "one) or the address of a Ray cluster this machine is a node of, e.g. head:6379; "
        "empty = one process",
    )
    cluster_name: str = setting(
        "rasst",
        "the Ray Serve application (and its board actor); one per front-end in a Ray cluster",
    )
    cluster_min_replicas: int = setting(
        1, "fewest replicas (the autoscaler's floor)", lo=1, hi=1024
    )
    cluster_max_replicas: int = setting(
        1, "most replicas (= cluster_min_replicas: a fixed number)", lo=1, hi=1024
    )
    cluster_target_ongoing_requests: float = setting(
        4.0, "clips in flight per replica the autoscaler aims for", lo=0.1, hi=10_000
    )
    cluster_max_ongoing_requests: int = setting(
        64, "clips in flight on one replica before callers queue", lo=1, hi=100_000
    )
    cluster_replica_cpus: float = setting(1.0, "CPUs reserved per replica", lo=0, hi=1024)
    cluster_replica_gpus: float = setting(
        0.0, "GPUs per replica (fractions share one GPU, e.g. 0.25)", lo=0, hi=64
    )
    cluster_switch_timeout_s: float = setting(
        600.0,
        "seconds every replica gets to load a new glossary version or model before the "
        "change is called off",
        lo=1,
        hi=86400,
    )

    def engine(self) -> EngineConfig:
        """The engine's settings alone."""
        return EngineConfig(**{f.name: getattr(self, f.name) for f in fields(EngineConfig)})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_range(f: Field, value) -> None:
    m = f.metadata
    if m.get("choices") is not None:
        if value not in m["choices"]:
            raise ValueError(f"{f.name} must be one of {', '.join(m['choices'])}, got {value!r}")
        return
    lo, hi = m.get("lo"), m.get("hi")
    if lo is None and hi is None:
        return
    if not (lo <= value <= hi):
        note = f" ({m['note']})" if m.get("note") else ""
        raise ValueError(f"{f.name} must be in [{lo:g}, {hi:g}]{note}, got {value}")


def validate_config(c: EngineConfig) -> EngineConfig:
    """Check every declared range and choice, then the rules between settings; raise
    ``ValueError`` naming the setting and what it allows."""
    for f in fields(c):
        _check_range(f, getattr(c, f.name))
    if c.device == "cuda" and not cuda_available():
        raise ValueError("device is cuda but neither CTranslate2 nor torch sees a CUDA device")
    if isinstance(c, ServerConfig):
        if ":" not in c.address:
            raise ValueError(f"address must be host:port, got {c.address!r}")
        if bool(c.tls_cert) != bool(c.tls_key):
            raise ValueError("tls_cert and tls_key must be given together")
        if c.admin_token and not c.admin_token.strip():
            raise ValueError("admin_token is blank; give a token or leave it unset to generate one")
        if c.cluster_max_replicas < c.cluster_min_replicas:
            raise ValueError(
                f"cluster_max_replicas ({c.cluster_max_replicas}) must be >= "
                f"cluster_min_replicas ({c.cluster_min_replicas})"
            )
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", c.cluster_name):
            raise ValueError(
                f"cluster_name must be 1-64 letters, digits, '_' or '-', got {c.cluster_name!r}"
            )
    return c


def _coerce(f: Field, value):
    want = type(f.default) if f.default is not MISSING else str
    if want is bool and isinstance(value, str):
        v = value.strip().lower()
        if v not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"setting {f.name} must be true or false, got {value!r}")
        return v in ("1", "true", "yes", "on")
    if want is bool and not isinstance(value, bool):
        raise ValueError(f"setting {f.name} must be true or false, got {value!r}")
    try:
        return want(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"setting {f.name} must be {want.__name__}, got {value!r}") from e


def load_config(
    flag_values: dict, toml_path: str | None = None, env: dict | None = None
) -> ServerConfig:
    """Defaults < TOML file (keys optionally under ``[server]``) < environment
    (``RASST_<FIELD>``) < flags (``None`` = not given). Raises ``ValueError``."""
    env = os.environ if env is None else env
    by_name = {f.name: f for f in fields(ServerConfig)}
    values: dict = {}
    if toml_path:
        import tomllib

        try:
            data = tomllib.loads(Path(toml_path).read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"cannot read config file {toml_path}: {e}") from e
        values.update(data.get("server", data))
    for name in by_name:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = env[key]
    values.update({k: v for k, v in flag_values.items() if v is not None})
    unknown = set(values) - set(by_name)
    if unknown:
        raise ValueError(f"unknown server settings {sorted(unknown)}")
    coerced = {k: _coerce(by_name[k], v) for k, v in values.items()}
    return validate_config(replace(ServerConfig(), **coerced))


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting: ``--max-wait-ms``; booleans as ``--rescore/--no-rescore``.
    Every flag defaults to ``None`` (not given), so lower layers of :func:`load_config`
    show through."""
    for f in fields(ServerConfig):
        m = f.metadata
        default = f" (default {f.default})" if f.default not in ("", None) else ""
        kw: dict = {"dest": f.name, "default": None, "help": m["help"] + default}
        if isinstance(f.default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = type(f.default)
            kw["metavar"] = f.name.upper()
            if m.get("choices"):
                kw["choices"] = list(m["choices"])
        parser.add_argument(_flag(f.name), **kw)


def cuda_available() -> bool:
    try:
        import ctranslate2

        if ctranslate2.get_cuda_device_count() > 0:
            return True
    except ImportError:
        pass
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return device


def resolve_workers(workers: int, device: str, threads: int = 1) -> int:
    """``workers`` = 0: one on a GPU (it wants large batches), else one per ``threads``
    cores, at most 4."""
    if workers:
        return workers
    if device.startswith("cuda"):
        return 1
    return max(1, min(4, (os.cpu_count() or 1) // threads))
