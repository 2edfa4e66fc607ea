"""The specificity prior: how much an entry looks like ordinary speech.

Short words and hub entries sit close to many speech windows that hold no term at all,
so they pass the threshold on carrier speech and make most of the false hints. The
checkpoint keeps a sample of such background windows (from training utterances, away
from every term occurrence). An entry's *hubness* is the mean cosine of its ``k``
nearest background windows; its scores lose ``weight * max(0, hubness - ref)``
(``DualEncoder.entry_prior``), a CSLS-like correction (Conneau et al., 2018) that needs
no speech at query time. The weight is the one with the best dev recall at 0.9 hint
precision.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from rasst.retriever.model import DualEncoder, int8_speech_head

from .features import FeatureCache

logger = logging.getLogger(__name__)


@dataclass
class PriorConfig:
    # Background windows kept in the checkpoint (float16: 0.5 KB each at 256 dims); 0 = no
    # prior.
    size: int = 4096
    # Nearest background windows averaged into an entry's hubness.
    k: int = 10
    # Training utterances the background is drawn from.
    utterances: int = 1500
    # Weights tried on dev (0 = no prior).
    weights: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5)
    # Glossary sizes whose dev recall at ``precision`` is averaged to choose the weight.
    tune_sizes: tuple[int, ...] = (1000, 10_000)
    precision: float = 0.9
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.size <= 1_000_000:
            raise ValueError(f"prior size must be in [0, 1000000], got {self.size}")
        if self.size and not 1 <= self.k <= self.size:
            raise ValueError(f"prior k must be in [1, size={self.size}], got {self.k}")
        if self.utterances < 1:
            raise ValueError(f"prior utterances must be >= 1, got {self.utterances}")
        if not self.weights or any(not 0.0 <= w <= 10.0 for w in self.weights):
            raise ValueError(f"prior weights must be in [0, 10], got {self.weights}")


@torch.no_grad()
def background_windows(
    model: DualEncoder, cache: FeatureCache, cfg: PriorConfig, precision: str = "int8"
) -> np.ndarray:
    """Window vectors (as served: int8 head by default) of ``cfg.utterances`` random
    utterances, keeping only windows that overlap no term occurrence; ``cfg.size`` of
    them at random."""
    rng = np.random.default_rng(cfg.seed)
    n_utt = len(cache.offsets) - 1
    head = int8_speech_head(model.speech) if precision == "int8" else None
    occ_of: dict[int, list[np.ndarray]] = {}
    for u, span in zip(cache.occ_utt, cache.occ_span, strict=True):
        occ_of.setdefault(int(u), []).append(span)
    kept = []
    for u in rng.choice(n_utt, min(cfg.utterances, n_utt), replace=False):
        frames = torch.from_numpy(cache.utt_frames(int(u)).astype(np.float32))
        vecs, spans = model.encode_audio(frames, head=head)
        free = np.ones(len(spans), bool)
        for a, b in occ_of.get(int(u), []):
            free &= (spans[:, 1] <= a) | (spans[:, 0] >= b)
        kept.append(vecs[free])
    bank = np.concatenate(kept) if kept else np.zeros((0, model.config.embed_dim), np.float32)
    if len(bank) < cfg.k:
        raise ValueError(
            f"only {len(bank)} background windows (need >= k={cfg.k}): the utterances are all term"
        )
    if len(bank) > cfg.size:
        bank = bank[np.sort(rng.choice(len(bank), cfg.size, replace=False))]
    return bank


def fit_prior(
    model: DualEncoder,
    train: FeatureCache,
    dev: FeatureCache,
    distractors: list[str],
    cfg: PriorConfig | None = None,
) -> dict:
    """Give ``model`` a background and the prior weight with the best mean dev recall at
    ``cfg.precision`` over ``cfg.tune_sizes``; its reference hubness is the least of the
    dev glossary's. Returns the figures for metrics.json."""
    from .evaluate import build_glossary, calibrate_thresholds, encode_occurrences

    cfg = cfg or PriorConfig()
    model.set_background(background_windows(model, train, cfg), cfg.k)
    occ = encode_occurrences(model, dev)
    terms = list(dict.fromkeys(occ.terms))
    # Sizes the dev terms and distractors cannot fill are tuned at the largest they can.
    most = len(terms) + len(distractors)
    sizes = tuple(sorted({min(s, most) for s in cfg.tune_sizes}))
    glossary = build_glossary(terms, distractors, sizes[-1])
    ref = float(model.hubness(model.encode_terms(glossary)).min())
    rows = []
    for w in cfg.weights:
        model.config = replace(model.config, prior_weight=float(w), prior_ref=ref)
        cals = calibrate_thresholds(
            model, dev, distractors, sizes, occ=occ, precision_target=cfg.precision
        )
        row = {
            "weight": float(w),
            "recall_at_p": float(np.mean([c["recall_at_p"] for c in cals])),
            "f1": float(np.mean([c["f1"] for c in cals])),
            "by_size": {c["glossary_size"]: round(c["recall_at_p"], 4) for c in cals},
        }
        rows.append(row)
        logger.info(
            "prior weight %.3g: dev recall at P %.2f %.3f, best F1 %.3f",
            w,
            cfg.precision,
            row["recall_at_p"],
            row["f1"],
        )
    best = max(rows, key=lambda r: (r["recall_at_p"], r["f1"], -r["weight"]))
    model.config = replace(model.config, prior_weight=best["weight"])
    return {
        "prior_config": asdict(cfg),
        "prior_weight": best["weight"],
        "prior_ref": ref,
        "prior_weights_dev": rows,
    }
