"""rasst on Ray Serve: replicas encode and search, one gRPC front-end keeps the sessions.

The front-end is the ordinary rasst server (the same servicers, validation, admin
authentication, health and metrics) with :class:`ClusterEngine` in place of the
in-process engine. Every clip goes through a Ray Serve deployment handle to a
:class:`Replica`, an in-process :class:`~rasst.retriever.engine.Engine` (front-end,
heads, search, second stage, and its cross-request batching) on the CPUs or GPUs Ray
reserved for it. Sessions (look-back buffers, sequence numbers) stay in the front-end,
so a replica holds no per-stream state and any replica can answer any clip.

One consistent version. What the replicas serve is a :class:`Generation`: a model
checkpoint and one version of each glossary, numbered. The glossary store stays the
single source of truth; each version a generation names is also written, immutable, to
``{data_dir}/cluster/glossaries/{id}@{version}.json``, so every node reads the same
bytes. A change is two-phase through a :class:`Board` (a Ray actor): the front-end
publishes generation N+1; every live replica loads and embeds it while still answering
N, and reports; when all have it the front-end commits the store and switches, by one
assignment, the generation it stamps on new clips. A replica that fails to load makes
the admin call fail with its reason, and nothing switches. A clip is answered by the
generation it was stamped with, so no response mixes versions, and a stream's versions
never go backwards. A replica that starts (autoscaling, restart after a crash) loads the
current generation before it takes traffic.

A clip whose replica dies (kill -9) is sent once more, to another replica, with the same
generation.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .config import EngineConfig, ServerConfig, validate_config
from .engine import (
    EngineNotReady,
    Result,
    ServedGlossary,
    Snapshot,
    SwitchFailed,
    UnknownGlossary,
)
from .glossary import Glossary, GlossaryStore, atomic_write, glossary_bytes, read_glossary
from .model import DualEncoder, checkpoint_id

logger = logging.getLogger(__name__)

NAMESPACE = "rasst"
# A replica beats this often; one silent for LIVE_S is taken for dead (it will not be
# waited for, and is dropped from the holders).
BEAT_S = 0.5
LIVE_S = 3.0
WATCH_S = 2.0  # a replica's long poll of the board
CLOSE_S = 15.0  # the most a shutdown waits for Ray
# Set when a shutdown gave up waiting for Ray: its threads are still stopping, and the
# interpreter's own finalisation at exit would race them (``rasst serve`` exits at once).
RAY_LEFT_STOPPING = threading.Event()


@dataclass(frozen=True)
class Generation:
    """What every replica serves at one time: a model and one version of each glossary."""

    number: int
    checkpoint: str  # absolute path, readable on every node
    model_id: str
    glossaries: tuple[tuple[str, int], ...] = ()  # (glossary id, version), sorted

    def with_glossary(self, gid: str, version: int | None) -> tuple[tuple[str, int], ...]:
        """The glossary versions with ``gid`` at ``version`` (None: without ``gid``)."""
        d = dict(self.glossaries)
        if version is None:
            d.pop(gid, None)
        else:
            d[gid] = version
        return tuple(sorted(d.items()))


class StaleGeneration(LookupError):
    """The replica no longer holds the generation a clip was stamped with."""


class VersionFiles:
    """Immutable glossary versions every node reads: ``{data_dir}/cluster/glossaries/``."""

    def __init__(self, data_dir: str | Path):
        self.dir = Path(data_dir) / "cluster" / "glossaries"

    def path(self, gid: str, version: int) -> Path:
        return self.dir / f"{gid}@{version}.json"

    def write(self, g: Glossary) -> None:
        p = self.path(g.glossary_id, g.version)
        if not p.exists():
            atomic_write(p, glossary_bytes(g))

    def read(self, gid: str, version: int) -> Glossary:
        g = read_glossary(self.path(gid, version))
        if (g.glossary_id, g.version) != (gid, version):
            raise ValueError(f"{self.path(gid, version)} holds {g.glossary_id}@{g.version}")
        return g

    def prune(self, keep: set[tuple[str, int]]) -> None:
        """Remove every version file but ``keep`` (those the live generations name)."""
        for p in self.dir.glob("*@*.json"):
            gid, _, v = p.stem.rpartition("@")
            if v.isdigit() and (gid, int(v)) not in keep:
                p.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the board


class Board:
    """The generations and who holds them (a Ray actor, one per front-end).

    ``current`` is what new clips are stamped with; ``pending`` the one being loaded.
    Replicas long-poll :meth:`watch`, load what is new, :meth:`report` the outcome and
    :meth:`beat` while alive."""

    def __init__(self):
        self.current: Generation | None = None
        self.pending: Generation | None = None
        self.reports: dict[int, dict[str, str]] = {}  # generation -> replica -> "" or reason
        self.beats: dict[str, float] = {}
        self.held: dict[str, set[int]] = {}  # replica -> generations it serves
        self._changed: asyncio.Condition | None = None

    def _cond(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def _newest(self) -> int:
        return max((g.number for g in (self.current, self.pending) if g is not None), default=0)

    async def _notify(self) -> None:
        async with self._cond():
            self._cond().notify_all()

    async def watch(self, replica: str, known: int, timeout: float):
        """(current, pending) as soon as either is newer than ``known``, or at ``timeout``."""
        self.beats[replica] = time.monotonic()
        cond = self._cond()
        async with cond:
            try:
                await asyncio.wait_for(cond.wait_for(lambda: self._newest() > known), timeout)
            except TimeoutError:
                pass
        self.beats[replica] = time.monotonic()
        return self.current, self.pending

    def view(self):
        return self.current, self.pending

    def beat(self, replica: str) -> None:
        self.beats[replica] = time.monotonic()

    def leave(self, replica: str) -> None:
        self.beats.pop(replica, None)
        self.held.pop(replica, None)

    def live(self) -> list[str]:
        now = time.monotonic()
        for r in [r for r, t in self.beats.items() if now - t > LIVE_S]:
            self.leave(r)
        return sorted(self.beats)

    def report(self, replica: str, number: int, reason: str, holds: list[int]) -> None:
        self.beats[replica] = time.monotonic()
        self.held[replica] = set(holds)
        if self.pending is not None and number == self.pending.number:
            self.reports.setdefault(number, {})[replica] = reason

    async def publish(self, g: Generation) -> None:
        self.pending = g
        self.reports[g.number] = {}
        await self._notify()

    def outcome(self, number: int) -> dict:
        """Who is live, who has loaded ``number``, and who failed it (with the reason)."""
        live = self.live()
        got = self.reports.get(number, {})
        return {
            "live": live,
            "ok": sorted(r for r, why in got.items() if not why),
            "failed": {r: why for r, why in got.items() if why},
        }

    async def commit(self, number: int) -> None:
        if self.pending is not None and self.pending.number == number:
            self.current, self.pending = self.pending, None
            self.reports.pop(number, None)
            await self._notify()

    async def abort(self, number: int) -> None:
        if self.pending is not None and self.pending.number == number:
            self.pending = None
            self.reports.pop(number, None)
            await self._notify()

    def holders(self, number: int) -> int:
        """Live replicas that serve generation ``number``."""
        return sum(1 for r in self.live() if number in self.held.get(r, ()))


# --------------------------------------------------------------------------- replicas


class Replica:
    """One Ray Serve replica: an engine without a store, answering each clip from the
    generation it is stamped with. It loads the current generation before it takes
    traffic, then follows the board."""

    def __init__(self, data_dir: str, engine_cfg: dict, board: str, cpus: float = 1.0):
        import ray

        from .engine import Engine

        self.name = f"replica-{uuid.uuid4().hex[:8]}-{os.getpid()}"
        cfg = EngineConfig(**engine_cfg)
        if cfg.workers == 0 and cfg.device != "cuda":
            # One encoder worker per reserved core, not per core of the node.
            cfg = replace(cfg, workers=max(1, min(4, int(cpus // cfg.threads) or 1)))
        self.engine = Engine(None, cfg, embeddings_dir=Path(data_dir) / "embeddings")
        self.files = VersionFiles(data_dir)
        self.snaps: dict[int, Snapshot] = {}
        self.failed: set[int] = set()
        self._loaded = threading.Condition()
        self._running = True
        self.board_name = board
        self.board = ray.get_actor(board, namespace=NAMESPACE)
        # Beat before reading the board: a generation published after the read is then
        # published to a board that already counts this replica as live, and waits for it.
        ray.get(self.board.beat.remote(self.name))
        threading.Thread(target=self._beat, name="rasst-beat", daemon=True).start()
        current, pending = ray.get(self.board.view.remote())
        if current is not None:
            self._load(current)  # before any traffic: Serve routes here after __init__
        self._known = current.number if current is not None else 0
        self._current = self._known  # the board's current generation, as last seen
        threading.Thread(target=self._watch, name="rasst-watch", daemon=True).start()
        self._metrics()
        logger.info("%s ready at generation %d", self.name, self._known)

    def _metrics(self) -> None:
        from ray.util import metrics

        self.m_requests = metrics.Counter(
            "rasst_replica_clips", "clips answered by this replica", tag_keys=("replica",)
        )
        self.m_encode = metrics.Histogram(
            "rasst_replica_encode_ms",
            "encoder time of each clip's batch (ms)",
            boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500],
            tag_keys=("replica",),
        )
        self.m_requests.set_default_tags({"replica": self.name})
        self.m_encode.set_default_tags({"replica": self.name})

    # -- following the board
    def _board(self):
        import ray

        try:
            return ray.get_actor(self.board_name, namespace=NAMESPACE)
        except ValueError:
            return None

    def _beat(self) -> None:
        import ray

        while self._running:
            try:
                ray.get(self.board.beat.remote(self.name), timeout=LIVE_S)
            except Exception:  # the board restarts with its front-end: find it again
                self.board = self._board() or self.board
            time.sleep(BEAT_S)

    def _watch(self) -> None:
        import ray

        while self._running:
            try:
                current, pending = ray.get(
                    self.board.watch.remote(self.name, self._known, WATCH_S),
                    timeout=WATCH_S + LIVE_S,
                )
            except Exception:
                time.sleep(BEAT_S)
                self.board = self._board() or self.board
                continue
            for g in (current, pending):
                if g is None or g.number in self.snaps or g.number in self.failed:
                    continue
                reason = ""
                try:
                    self._load(g)
                except Exception as e:  # reported to the admin call that published it
                    self.failed.add(g.number)
                    reason = f"{self.name}: {type(e).__name__}: {e}"
                    logger.error("could not load generation %d: %s", g.number, reason)
                self.board.report.remote(self.name, g.number, reason, sorted(self.snaps))
            newest = [g.number for g in (current, pending) if g is not None]
            self._known = max([self._known, *newest])
            self._current = current.number if current is not None else 0
            if current is not None:
                self._prune(current.number, pending.number if pending else None)
            self.board.report.remote(self.name, -1, "", sorted(self.snaps))

    def _load(self, g: Generation) -> None:
        """Build generation ``g``'s snapshot beside the ones served (blocking)."""
        t0 = time.monotonic()
        base = self.snaps[max(self.snaps)] if self.snaps else None
        glossaries = [self.files.read(gid, v) for gid, v in g.glossaries]
        snap = self.engine.build_snapshot(g.checkpoint, glossaries, base)
        if snap.model_id != g.model_id:
            raise ValueError(f"checkpoint {g.checkpoint} is {snap.model_id} here, not {g.model_id}")
        with self._loaded:
            self.snaps[g.number] = snap
            self._loaded.notify_all()
        logger.info(
            "%s loaded generation %d in %.0f ms", self.name, g.number, (time.monotonic() - t0) * 1e3
        )

    def _prune(self, current: int, pending: int | None) -> None:
        """Keep the current generation, the one before it (clips stamped just before a
        switch are still on their way) and the pending one."""
        with self._loaded:
            older = sorted(n for n in self.snaps if n < current)
            keep = {current, *older[-1:], *([pending] if pending else [])}
            for n in list(self.snaps):
                if n not in keep:
                    del self.snaps[n]

    def _wait_for(self, number: int, timeout: float) -> Snapshot | None:
        with self._loaded:
            self._loaded.wait_for(
                lambda: number in self.snaps or number in self.failed, timeout=timeout
            )
            return self.snaps.get(number)

    # -- serving
    async def search(
        self,
        number: int,
        clip: np.ndarray,
        glossary_id: str,
        top_k: int,
        threshold: float | None,
        deadline_s: float,
        clip_start_s: float = 0.0,
        new_from_s: float = 0.0,
    ) -> Result:
        snap = self.snaps.get(number)
        if snap is None:
            if self.snaps and number < min(self.snaps):
                raise StaleGeneration(number)
            # Published while this replica was starting: it is loading it now.
            snap = await asyncio.to_thread(self._wait_for, number, deadline_s)
            if snap is None:
                raise StaleGeneration(number)
        result = await self.engine.submit(
            clip,
            glossary_id,
            top_k,
            threshold,
            deadline_s,
            clip_start_s,
            new_from_s,
            snapshot=snap,
        )
        self.m_requests.inc()
        self.m_encode.observe(result.encode_ms)
        return result

    def check_health(self) -> None:
        """Ray Serve's periodic probe: a replica that could not load the current
        generation is replaced, not left to answer clips it cannot serve."""
        if self._current in self.failed:
            raise RuntimeError(f"{self.name} could not load generation {self._current}")

    def __del__(self):
        self._running = False
        try:
            self.board.leave.remote(self.name)
            self.engine.close()
        except Exception:
            pass


# --------------------------------------------------------------------------- front-end


@dataclass(frozen=True)
class _Model:
    """What the front-end knows of the model: its config (thresholds, windows)."""

    config: object


@dataclass(frozen=True)
class FrontSnapshot:
    """The front-end's view: the generation new clips are stamped with, and what the
    servicers check a query against (glossary ids, languages, versions)."""

    generation: Generation | None
    model: _Model | None
    model_id: str
    glossaries: dict[str, ServedGlossary] = field(default_factory=dict)
    holders: int = 0  # live replicas serving this generation

    @property
    def ready(self) -> bool:
        return self.model is not None and self.holders > 0


class ClusterEngine:
    """The engine interface of :class:`~rasst.retriever.engine.Engine` over Ray Serve
    replicas (the servicers cannot tell them apart)."""

    def __init__(self, store: GlossaryStore, cfg: ServerConfig):
        try:
            import ray
            from ray import serve
        except ImportError:
            raise RuntimeError("cluster needs Ray Serve: pip install 'rasst[cluster]'") from None

        validate_config(cfg)
        self.store = store
        self.server_cfg = cfg
        self.cfg = replace(
            cfg.engine(),
            device="cuda" if cfg.cluster_replica_gpus > 0 else "cpu",
            workers=cfg.workers or 1,
        )
        self.files = VersionFiles(cfg.data_dir)
        self.stats = {"requests": 0, "dropped": 0}  # what GetStats reports
        self.on_change = None  # called (from any thread) when readiness may have changed
        self._snap = FrontSnapshot(None, None, "", {})
        self._swap_lock = threading.Lock()
        self._in_flight = 0
        self._published = 0  # the last generation number published
        self._started_ray = False
        self.app = cfg.cluster_name
        self.board_name = f"{self.app}-board"
        if not ray.is_initialized():
            self._started_ray = _init_ray(cfg.cluster)
        try:
            self.board = (
                ray.remote(Board)
                .options(
                    name=self.board_name, namespace=NAMESPACE, num_cpus=0, max_concurrency=1000
                )
                .remote()
            )
        except ValueError:
            raise RuntimeError(
                f"another front-end already runs cluster_name {self.app!r} in this Ray cluster; "
                "give this one its own cluster_name"
            ) from None
        serve.start(proxy_location="Disabled")
        if self.app in serve.status().applications:
            serve.delete(self.app)  # replicas of an earlier front-end follow a board now gone
        self.handle = serve.run(self._application(), name=self.app, route_prefix=None)
        self._running = True
        self._watcher = threading.Thread(target=self._follow, name="rasst-holders", daemon=True)
        self._watcher.start()

    def _application(self):
        from ray import serve

        c = self.server_cfg
        opts: dict = {
            "ray_actor_options": {
                "num_cpus": c.cluster_replica_cpus,
                "num_gpus": c.cluster_replica_gpus,
            },
            "max_ongoing_requests": c.cluster_max_ongoing_requests,
            "health_check_period_s": 2.0,
            "graceful_shutdown_timeout_s": max(1.0, c.drain_s),
        }
        if c.cluster_max_replicas > c.cluster_min_replicas:
            opts["autoscaling_config"] = {
                "min_replicas": c.cluster_min_replicas,
                "max_replicas": c.cluster_max_replicas,
                "target_ongoing_requests": c.cluster_target_ongoing_requests,
            }
        else:
            opts["num_replicas"] = c.cluster_min_replicas
        engine_cfg = {k: getattr(self.cfg, k) for k in self.cfg.__dataclass_fields__}
        dep = serve.deployment(Replica, name="Replica").options(**opts)
        return dep.bind(
            str(Path(c.data_dir).resolve()),
            engine_cfg,
            self.board_name,
            float(c.cluster_replica_cpus or 1.0),
        )

    # -- the view the servicers read
    @property
    def snapshot(self) -> FrontSnapshot:
        return self._snap

    def queue_depth(self) -> int:
        return self._in_flight

    def _follow(self) -> None:
        """Keep ``holders`` (replicas serving the current generation) fresh for health."""
        import ray

        while self._running:
            snap = self._snap
            if snap.generation is not None:
                try:
                    n = ray.get(self.board.holders.remote(snap.generation.number), timeout=5)
                except Exception:
                    n = snap.holders
                if n != snap.holders:
                    with self._swap_lock:
                        if self._snap.generation == snap.generation:
                            self._snap = replace(self._snap, holders=n)
                    if self.on_change is not None:
                        self.on_change()
            time.sleep(BEAT_S)

    # -- two-phase changes
    def _switch(self, checkpoint: str, model_id: str, glossaries, deadline: float | None):
        """Publish the next generation, wait until every live replica has loaded it (or
        one fails), return it; the caller commits. Raises SwitchFailed."""
        import ray

        # Numbers never repeat, not even after a generation was called off: a replica
        # that failed number N must not mistake a later attempt for it.
        self._published += 1
        number = self._published
        g = Generation(number, checkpoint, model_id, tuple(sorted(glossaries)))
        ray.get(self.board.publish.remote(g))
        limit = time.monotonic() + self.server_cfg.cluster_switch_timeout_s
        while True:
            out = ray.get(self.board.outcome.remote(number))
            if out["failed"]:
                ray.get(self.board.abort.remote(number))
                raise SwitchFailed("; ".join(out["failed"].values()))
            if out["live"] and set(out["live"]) <= set(out["ok"]):
                return g
            now = time.monotonic()
            if now > limit or (deadline is not None and now > deadline):
                ray.get(self.board.abort.remote(number))
                waiting = sorted(set(out["live"]) - set(out["ok"])) or ["no live replica"]
                raise SwitchFailed(
                    f"generation {number} was not loaded in time by {', '.join(waiting)}"
                )
            time.sleep(0.02)

    def _commit(self, g: Generation, glossaries: dict[str, Glossary], model) -> None:
        import ray

        ray.get(self.board.commit.remote(g.number))
        served = {gid: ServedGlossary(gl, None, ()) for gid, gl in glossaries.items()}
        holders = ray.get(self.board.holders.remote(g.number))
        with self._swap_lock:
            self._snap = FrontSnapshot(g, model, g.model_id, served, holders)
        keep = set(g.glossaries)
        self.files.prune(keep)
        if self.on_change is not None:
            self.on_change()

    def _current_glossaries(self) -> dict[str, Glossary]:
        return {gid: s.glossary for gid, s in self._snap.glossaries.items()}

    def load_model(self, checkpoint: str | Path) -> tuple[str, int]:
        """Every replica loads ``checkpoint`` and re-embeds every stored glossary; then all
        switch. Blocking. A replica that fails: ValueError with its reason, nothing switches."""
        checkpoint = str(Path(checkpoint).resolve())
        model = _Model(DualEncoder.load_config(checkpoint))
        mid = checkpoint_id(checkpoint)
        gl = {g.glossary_id: g for g in self.store.list()}
        for g in gl.values():
            self.files.write(g)
        try:
            gen = self._switch(checkpoint, mid, [(k, g.version) for k, g in gl.items()], None)
        except SwitchFailed as e:
            raise ValueError(f"the replicas could not load {checkpoint}: {e}") from None
        self._commit(gen, gl, model)
        logger.info("generation %d: model %s, %d glossaries", gen.number, mid, len(gl))
        return mid, len(gl)

    def commit_glossary(self, g: Glossary, deadline: float | None = None) -> None:
        from .engine import DeadlineExpired

        cur = self._snap.generation
        if cur is None:  # no model yet: the store alone
            self.store.commit(g)
            return
        self.files.write(g)
        try:
            gen = self._switch(
                cur.checkpoint, cur.model_id, cur.with_glossary(g.glossary_id, g.version), deadline
            )
        except SwitchFailed:
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExpired(f"glossary {g.glossary_id} version {g.version}") from None
            raise
        self.store.commit(g)
        gl = self._current_glossaries()
        gl[g.glossary_id] = g
        self._commit(gen, gl, self._snap.model)

    def delete_glossary(self, gid: str) -> bool:
        cur = self._snap.generation
        if cur is not None and gid in dict(cur.glossaries):
            gen = self._switch(cur.checkpoint, cur.model_id, cur.with_glossary(gid, None), None)
            ok = self.store.delete(gid)
            gl = self._current_glossaries()
            gl.pop(gid, None)
            self._commit(gen, gl, self._snap.model)
            return ok
        return self.store.delete(gid)

    # -- clips
    def submit(
        self,
        clip: np.ndarray,
        glossary_id: str,
        top_k: int,
        threshold: float | None,
        deadline_s: float,
        clip_start_s: float = 0.0,
        new_from_s: float = 0.0,
    ) -> asyncio.Future:
        snap = self._snap
        if snap.generation is None:
            raise EngineNotReady()
        if glossary_id not in snap.glossaries:
            raise UnknownGlossary(glossary_id)
        self.stats["requests"] += 1
        return asyncio.ensure_future(
            self._call(
                snap.generation,
                (clip, glossary_id, top_k, threshold, deadline_s, clip_start_s, new_from_s),
            )
        )

    async def _call(self, gen: Generation, args: tuple) -> Result:
        from ray.exceptions import ActorUnavailableError, RayActorError

        self._in_flight += 1
        try:
            for attempt in (0, 1):
                try:
                    result = await self.handle.search.remote(gen.number, *args)
                    if result.dropped:
                        self.stats["dropped"] += 1
                    return result
                except StaleGeneration:
                    # The replica moved on (a switch: the newer generation answers) or
                    # could not load this one (another replica answers).
                    if attempt:
                        raise
                    newer = self._snap.generation
                    if newer is not None and newer.number > gen.number:
                        gen = newer
                except (RayActorError, ActorUnavailableError) as e:
                    if attempt:
                        raise
                    logger.warning("replica lost (%s); clip sent to another", type(e).__name__)
            raise AssertionError("unreachable")
        finally:
            self._in_flight -= 1

    def close(self) -> None:
        """Delete the application and the board, and stop Ray when this process started
        it; for at most CLOSE_S. A SIGTERM to the whole process group (systemd's default)
        stops Ray's own processes too, and waiting on them would hang the drain."""
        import ray
        from ray import serve

        self._running = False
        done = threading.Event()

        def stop() -> None:
            try:
                serve.delete(self.app)
                ray.kill(self.board)
                if self._started_ray:
                    serve.shutdown()
                    ray.shutdown()
            except Exception as e:
                logger.warning("cluster shutdown: %s", e)
            done.set()

        threading.Thread(target=stop, name="rasst-cluster-close", daemon=True).start()
        if not done.wait(CLOSE_S):
            RAY_LEFT_STOPPING.set()
            logger.warning("Ray did not stop within %.0f s; leaving it", CLOSE_S)


def _init_ray(address: str) -> bool:
    """Join the Ray instance at ``address`` ('auto': the local one, else start one);
    True when this process started it."""
    import ray

    kw = {"namespace": NAMESPACE, "log_to_driver": False}
    try:
        if address != "auto":
            ray.init(address=address, **kw)
            return False
        try:
            ray.init(address="auto", **kw)
            return False
        except ConnectionError:
            ray.init(include_dashboard=False, **kw)
            return True
    except (ConnectionError, OSError, ValueError, RuntimeError) as e:
        raise RuntimeError(f"cluster {address!r}: Ray did not start or join: {e}") from None
