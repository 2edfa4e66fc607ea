"""What the servicers of one server share: settings, engine, store, health and metrics."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from rasst.v1 import admin_pb2, retrieval_pb2

from .config import ServerConfig
from .engine import Engine
from .glossary import GlossaryStore
from .metrics import Metrics

SERVICE_NAMES = (
    retrieval_pb2.DESCRIPTOR.services_by_name["TermRetrieval"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["GlossaryAdmin"].full_name,
)


@dataclass
class ServerState:
    config: ServerConfig
    engine: Engine
    store: GlossaryStore
    health: HealthServicer
    metrics: Metrics
    started: float = field(default_factory=time.time)
    # Open StreamRetrieve calls, counted from their start (before their SessionConfig).
    active_sessions: int = 0
    # Serialises admin mutations (put, patch, delete, reload).
    admin_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    draining: bool = False
    loading: bool = False  # the start-up model load is in progress

    async def set_serving(self) -> None:
        ok = self.engine.snapshot.ready and not self.draining
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    def refresh_glossary_metrics(self) -> None:
        for g in self.store.list():
            self.metrics.glossary_entries.labels(g.glossary_id).set(len(g.entries))
            self.metrics.glossary_version.labels(g.glossary_id).set(g.version)
