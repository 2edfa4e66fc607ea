"""Assembly of a rasst server, and ``rasst serve``.

``create_server(config) -> (server, port, state)`` and ``serve(config)`` are separate so
tests bind ``127.0.0.1:0`` and talk through a real channel. The pieces: settings
(``config.py``), the data plane (``retrieval.py``) and its sessions (``session.py``), the
control plane and its authentication (``admin.py``), the shared state (``state.py``),
metrics (``metrics.py``) and the gRPC plumbing (``rpc.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from rasst.v1 import admin_pb2, retrieval_pb2

from .admin import AdminAuth, GlossaryAdminServicer, resolve_admin_token, resolve_checkpoint
from .config import ServerConfig, add_flags, load_config, validate_config
from .engine import Engine
from .glossary import GlossaryStore, load_file
from .metrics import Metrics
from .model import DualEncoder
from .retrieval import TermRetrievalServicer
from .rpc import add_service
from .state import SERVICE_NAMES, ServerState

logger = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).parent / "demo"


async def create_server(
    cfg: ServerConfig, load: bool = True
) -> tuple[grpc.aio.Server, int, ServerState]:
    """Build and start a server (bound, serving); returns (server, port, state)."""
    validate_config(cfg)
    if load and cfg.checkpoint != "none":
        # Refuse a missing or broken checkpoint before anything is written to the data dir.
        DualEncoder.load_config(resolve_checkpoint(cfg.checkpoint))
    admin_token = resolve_admin_token(cfg)
    store = GlossaryStore(cfg.data_dir)
    if cfg.cluster:
        from .cluster import ClusterEngine

        engine = await asyncio.to_thread(ClusterEngine, store, cfg)
    else:
        engine = Engine(store, cfg.engine())
    if cfg.demo_glossary and store.get("demo") is None and (DEMO_DIR / "glossary.jsonl").exists():
        store.commit(store.prepare_put("demo", load_file(DEMO_DIR / "glossary.jsonl")))
    options = [
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options, interceptors=[AdminAuth(admin_token)])
    health = HealthServicer()
    state = ServerState(cfg, engine, store, health, Metrics())
    if cfg.cluster:
        # Replicas come and go: health follows whether any serves the current generation.
        loop = asyncio.get_running_loop()
        engine.on_change = lambda: loop.call_soon_threadsafe(
            lambda: asyncio.ensure_future(state.set_serving())
        )
    add_service(server, retrieval_pb2, "TermRetrieval", TermRetrievalServicer(state))
    add_service(server, admin_pb2, "GlossaryAdmin", GlossaryAdminServicer(state))
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    if cfg.tls_cert:
        creds = grpc.ssl_server_credentials(
            [(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())]
        )
        port = server.add_secure_port(cfg.address, creds)
    else:
        port = server.add_insecure_port(cfg.address)
    if port == 0:
        raise RuntimeError(f"could not bind {cfg.address}")
    await state.set_serving()
    await server.start()
    if load and cfg.checkpoint != "none":
        ckpt = resolve_checkpoint(cfg.checkpoint)
        state.loading = True
        try:
            await asyncio.to_thread(engine.load_model, ckpt)
        except BaseException:
            await server.stop(0)
            engine.close()
            raise
        finally:
            state.loading = False
        await state.set_serving()
    state.refresh_glossary_metrics()
    if cfg.metrics_port:
        from prometheus_client import start_http_server

        host = cfg.address.rsplit(":", 1)[0].strip("[]")  # metrics on the same interface as gRPC
        start_http_server(cfg.metrics_port, addr=host, registry=state.metrics.registry)
    logger.info(
        "rasst serving on port %d (model=%s, glossaries=%s)",
        port,
        engine.snapshot.model_id or "none",
        [g.glossary_id for g in store.list()],
    )
    return server, port, state


async def drain(server: grpc.aio.Server, state: ServerState, grace_s: float) -> None:
    """Stop taking work: NOT_SERVING, finish in-flight calls for up to grace_s, stop the workers."""
    state.draining = True
    await state.set_serving()
    await server.stop(grace_s)
    await asyncio.to_thread(state.engine.close)


async def serve(cfg: ServerConfig) -> None:
    server, port, state = await create_server(cfg)
    e = state.engine.cfg
    logger.info(
        "speech front-end on %s: %d encoder worker(s) x %d thread(s), %s arithmetic, second stage %s",
        e.device,
        e.workers,
        e.threads,
        e.precision,
        "on" if e.rescore else "off",
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"rasst listening on {cfg.address.rsplit(':', 1)[0]}:{port}", flush=True)
    await stop.wait()
    logger.info("draining (grace %.1fs)", cfg.drain_s)
    await drain(server, state, cfg.drain_s)


class _JsonFormatter(logging.Formatter):
    def format(self, record):
        return json.dumps(
            {
                "t": round(record.created, 3),
                "level": record.levelname,
                "logger": record.name,
                "msg": record.getMessage(),
            }
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="rasst serve",
        description="Run the rasst retrieval server (gRPC). Every flag is also an environment "
        "variable RASST_<SETTING> and a key of the --config file's [server] table.",
    )
    p.add_argument("--config", help="TOML file with [server] settings")
    add_flags(p)
    args = vars(p.parse_args(argv))
    toml_path = args.pop("config")
    try:
        cfg = load_config(args, toml_path)
    except ValueError as e:
        print(f"rasst serve: {e}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()
    if cfg.json_logs:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=cfg.log_level.upper(), handlers=[handler])
    try:
        asyncio.run(serve(cfg))
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"rasst serve: {e}", file=sys.stderr)
        return 1
    if cfg.cluster:
        from .cluster import RAY_LEFT_STOPPING

        if RAY_LEFT_STOPPING.is_set():
            # Ray's threads are still stopping: leave now, without the interpreter's
            # finalisation, which would race them (a drained server exited on SIGSEGV).
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    return 0
