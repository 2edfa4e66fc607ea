"""Embedded glossary rows kept on disk, so that nothing is embedded twice by one model.

Each committed version's rows (spoken form, the unit string of one of its
pronunciations, its vector and its specificity penalty) are written to
``{data_dir}/embeddings/{glossary_id}.npz``, tagged with the hash of the weights and
config that made them. A patch then embeds only the unit strings it adds, and a restart
loads every glossary's vectors instead of re-embedding them; a different model finds the
tag changed and embeds again.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .glossary import atomic_write

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rows:
    """Embedded rows: ``forms[i]`` has ``units[i]``, ``vectors[i]`` and ``prior[i]``."""

    model: str  # the weights hash of the model that made them
    forms: tuple[str, ...]
    units: tuple[str, ...]
    vectors: np.ndarray  # (n, embed_dim) float32
    prior: np.ndarray | None  # (n,) float32, or None when the model has no prior

    def by_units(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.units)}


class EmbeddingStore:
    """One ``.npz`` per glossary id under ``directory``; unreadable files are ignored."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    def _path(self, gid: str) -> Path:
        return self.dir / f"{gid}.npz"

    def load(self, gid: str, model: str) -> Rows | None:
        """The rows last saved for ``gid`` by ``model``, or None."""
        p = self._path(gid)
        if not p.exists():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                if str(z["model"]) != model:
                    return None
                prior = z["prior"] if z["prior"].size else None
                rows = Rows(
                    model,
                    tuple(z["forms"].tolist()),
                    tuple(z["units"].tolist()),
                    z["vectors"].astype(np.float32, copy=False),
                    None if prior is None else prior.astype(np.float32, copy=False),
                )
        except (OSError, ValueError, KeyError) as e:
            logger.warning("ignoring unreadable embeddings %s: %s", p, e)
            return None
        if not len(rows.forms) == len(rows.units) == len(rows.vectors):
            logger.warning("ignoring inconsistent embeddings %s", p)
            return None
        return rows

    def save(self, gid: str, rows: Rows) -> None:
        buf = io.BytesIO()
        np.savez(
            buf,
            model=np.array(rows.model),
            forms=np.array(rows.forms, dtype=str),
            units=np.array(rows.units, dtype=str),
            vectors=rows.vectors,
            prior=rows.prior if rows.prior is not None else np.zeros(0, np.float32),
        )
        atomic_write(self._path(gid), buf.getvalue())

    def delete(self, gid: str) -> None:
        self._path(gid).unlink(missing_ok=True)
