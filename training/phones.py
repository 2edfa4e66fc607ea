"""The second stage's phone head: CTC on the term spans of the cached front-end frames.

The dual encoder is trained first; the phone head then learns per-frame phoneme
posteriors from the same frozen frames, with each term occurrence's span (plus a few
frames each side, edges jittered) as input and the term's phonemes as the CTC target.
Last, the weight of its keyword score in the fused score is chosen on the dev split
(retriever/rescore.py).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rasst.retriever.model import DualEncoder
from rasst.retriever.pronounce import edit_distance
from torch import nn

from .features import FeatureCache
from .manifests import RESPELLED

logger = logging.getLogger(__name__)

STATE_NAME = "phone_state.pt"


@dataclass(frozen=True)
class PhoneTrainConfig:
    # Optimisation steps (0 = no phone head, cosine scores only).
    steps: int = 2500
    batch_size: int = 64
    # Width of the phone head, and its layers ("conv" or "gru": retriever/rescore.py).
    hidden: int = 256
    kind: str = "conv"
    lr: float = 2e-3
    weight_decay: float = 0.01
    # Frames kept on each side of a term span, and the most its edges move at random.
    margin: int = 4
    jitter: int = 3
    # Rescore weights tried on dev, and the glossary size they are compared at (MRR).
    weights: tuple[float, ...] = (0.03, 0.05, 0.1, 0.2)
    tune_size: int = 10_000
    # Evaluate dev phoneme error rate / save a resumable state every this many steps.
    eval_every: int = 500
    save_every: int = 500
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "margin", "jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"phone {name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 1:
            raise ValueError(f"phone batch_size must be >= 1, got {self.batch_size}")
        if not 2 <= self.hidden <= 4096 or self.hidden % 2:
            raise ValueError(f"phone hidden must be an even number in [2, 4096], got {self.hidden}")
        if not self.weights or any(not 0 < w <= 10 for w in self.weights):
            raise ValueError(f"phone weights must be in (0, 10], got {self.weights}")


def greedy_decode(logprobs: torch.Tensor, length: int) -> list[int]:
    """Best-path CTC labels of one clip: argmax per frame, repeats merged, blanks dropped."""
    best = logprobs[:length].argmax(-1).tolist()
    return [c for c, p in zip(best, [0, *best[:-1]], strict=True) if c != p and c != 0]


class PhoneTrainer:
    def __init__(
        self,
        model: DualEncoder,
        train: FeatureCache,
        dev: FeatureCache | None,
        cfg: PhoneTrainConfig,
        out_dir: Path,
    ):
        self.cfg = cfg
        self.model = model
        self.out = Path(out_dir)
        self.rng = np.random.default_rng(cfg.seed)
        torch.manual_seed(cfg.seed)
        if model.phone is None:
            model.attach_phone_head(cfg.hidden, cfg.kind)
        self.head = model.phone
        self.train = train
        self.dev = dev
        self.targets = self._targets(train)
        # Occurrences whose audio says the term as its phonemes spell it: a respelled term
        # (``manifests.RESPELLED``) sounds otherwise than its labels.
        self.usable = np.array(
            [i for i, u in enumerate(train.occ_utt) if RESPELLED not in train.utt_speaker[u]],
            dtype=np.int64,
        )
        if not len(self.usable):
            raise ValueError("the phone head needs utterances that say their terms as spelled")
        self.dev_targets = self._targets(dev) if dev is not None else []
        self.opt = torch.optim.AdamW(
            self.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.step = 0
        self.history: list[dict] = []

    def _targets(self, cache: FeatureCache) -> list[np.ndarray]:
        terms = sorted(set(cache.occ_term))
        labels = dict(
            zip(terms, self.model.phone_labels(self.model.term_units(terms)), strict=True)
        )
        return [labels[t] for t in cache.occ_term]

    def lr_at(self, step: int) -> float:
        """Linear warm-up over 5 % of the steps, then cosine decay to zero."""
        warm = max(1, self.cfg.steps // 20)
        if step < warm:
            return self.cfg.lr * (step + 1) / warm
        f = (step - warm) / max(1, self.cfg.steps - warm)
        return self.cfg.lr * 0.5 * (1 + np.cos(np.pi * min(1.0, f)))

    def _segment(self, cache: FeatureCache, occ: int, jitter: int) -> tuple[int, int]:
        u = cache.occ_utt[occ]
        n = int(cache.offsets[u + 1] - cache.offsets[u])
        a, b = (int(x) for x in cache.occ_span[occ])
        m = self.cfg.margin
        if jitter:
            a += int(self.rng.integers(-jitter, jitter + 1))
            b += int(self.rng.integers(-jitter, jitter + 1))
        a, b = max(0, a - m), min(n, b + m)
        b = max(b, min(n, a + 1))
        off = int(cache.offsets[u])
        return off + a, off + b

    def _batch(self, cache: FeatureCache, targets, occs, jitter: int):
        xs, ys = [], []
        for i in occs:
            a, b = self._segment(cache, int(i), jitter)
            xs.append(torch.from_numpy(cache.frames[a:b].astype(np.float32)))
            ys.append(torch.from_numpy(targets[i]))
        x_len = torch.tensor([len(x) for x in xs])
        y_len = torch.tensor([len(y) for y in ys])
        return nn.utils.rnn.pad_sequence(xs, batch_first=True), x_len, torch.cat(ys), y_len

    def train_step(self) -> dict:
        self.head.train()
        occs = self.usable[self.rng.integers(0, len(self.usable), self.cfg.batch_size)]
        x, x_len, y, y_len = self._batch(self.train, self.targets, occs, self.cfg.jitter)
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.step)
        lp = self.head(x, x_len)
        loss = F.ctc_loss(lp.transpose(0, 1), y, x_len, y_len, zero_infinity=True)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.head.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        return {"step": self.step, "ctc_loss": float(loss.detach())}

    @torch.no_grad()
    def evaluate_dev(self, n: int = 400) -> dict:
        """CTC loss and greedy phoneme error rate on the first ``n`` dev occurrences."""
        if self.dev is None or not self.dev_targets:
            return {}
        self.head.eval()
        occs = np.arange(min(n, len(self.dev_targets)))
        losses, errors, total = [], 0, 0
        for start in range(0, len(occs), 100):
            part = occs[start : start + 100]
            x, x_len, y, y_len = self._batch(self.dev, self.dev_targets, part, 0)
            lp = self.head(x, x_len)
            losses.append(
                float(F.ctc_loss(lp.transpose(0, 1), y, x_len, y_len, zero_infinity=True))
            )
            for k, i in enumerate(part):
                ref = self.dev_targets[i].tolist()
                errors += edit_distance(greedy_decode(lp[k], int(x_len[k])), ref)
                total += len(ref)
        return {"dev_ctc_loss": float(np.mean(losses)), "dev_per": errors / max(total, 1)}

    def save_state(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / (STATE_NAME + ".tmp")
        torch.save(
            {
                "head": self.head.state_dict(),
                "opt": self.opt.state_dict(),
                "step": self.step,
                "history": self.history,
                "rng": self.rng.bit_generator.state,
            },
            tmp,
        )
        os.replace(tmp, self.out / STATE_NAME)

    def maybe_resume(self) -> None:
        p = self.out / STATE_NAME
        if p.exists():
            st = torch.load(p, weights_only=False)
            self.head.load_state_dict(st["head"])
            self.opt.load_state_dict(st["opt"])
            self.step, self.history = st["step"], st["history"]
            self.rng.bit_generator.state = st["rng"]
            logger.info("phone head resumed from %s at step %d", p, self.step)

    def fit(self, progress: bool = True) -> list[dict]:
        from tqdm import tqdm

        self.maybe_resume()
        bar = tqdm(
            total=self.cfg.steps,
            initial=self.step,
            desc="phones",
            unit="step",
            disable=not progress,
        )
        t0 = time.time()
        while self.step < self.cfg.steps:
            rec = self.train_step()
            if self.cfg.eval_every and (
                self.step % self.cfg.eval_every == 0 or self.step == self.cfg.steps
            ):
                rec.update(self.evaluate_dev())
                rec["elapsed_s"] = round(time.time() - t0, 1)
            self.history.append(rec)
            bar.update(1)
            bar.set_postfix(
                ctc=f"{rec['ctc_loss']:.3f}",
                **({"dev_per": f"{rec['dev_per']:.3f}"} if "dev_per" in rec else {}),
            )
            if self.cfg.save_every and self.step % self.cfg.save_every == 0:
                self.save_state()
        bar.close()
        self.head.eval()
        return self.history


def tune_rescore_weight(
    model: DualEncoder,
    dev: FeatureCache,
    distractors: list[str],
    weights: tuple[float, ...],
    size: int = 10_000,
) -> tuple[float, list[dict]]:
    """The weight with the best dev MRR at ``size`` entries (fewer if the terms and
    distractors cannot fill it), and every weight's dev figures. The candidates and their
    alignment scores are computed once; each weight only fuses them again."""
    from rasst.retriever.g2p import normalize_term
    from rasst.retriever.index import TermIndex
    from rasst.retriever.rescore import fuse
    from rasst.retriever.scoring import RANK_ALL

    from .evaluate import Rescorer, build_glossary, encode_occurrences

    occ = encode_occurrences(model, dev)
    terms = list(dict.fromkeys(occ.terms))
    glossary = build_glossary(terms, distractors, min(size, len(terms) + len(distractors)))
    unit_strings, row_term = model.glossary_rows(glossary)
    vecs = model.encode_units(unit_strings)
    index = TermIndex(vecs, row_term, row_prior=model.row_penalty(vecs, unit_strings))
    rescorer = Rescorer.of(model, unit_strings)
    pos = {normalize_term(t).lower(): i for i, t in enumerate(glossary)}
    found = [
        rescorer.candidates(index, v, occ.spans[i], occ.phone_logprobs[occ.occ_utt[i]], RANK_ALL)
        for i, v in enumerate(occ.vectors)
    ]
    targets = [pos[normalize_term(t).lower()] for t in occ.terms]
    rows = []
    for w in weights:
        ranks = []
        for (entries, cos, kw, n), target in zip(found, targets, strict=True):
            order = entries[np.argsort(-fuse(cos, kw, n, w), kind="stable")]
            hit = np.nonzero(order == target)[0]
            ranks.append(int(hit[0]) + 1 if len(hit) else 10**9)
        r = np.asarray(ranks)
        row = {
            "weight": float(w),
            "glossary_size": len(glossary),
            "recall@1": float((r <= 1).mean()),
            "recall@10": float((r <= 10).mean()),
            "mrr": float(np.where(r < 10**9, 1.0 / r, 0.0).mean()),
        }
        rows.append(row)
        logger.info("rescore weight %.3g: dev R@1 %.3f MRR %.3f", w, row["recall@1"], row["mrr"])
    best = max(rows, key=lambda r: (r["mrr"], r["recall@1"]))
    model.config = replace(model.config, rescore_weight=best["weight"])
    return best["weight"], rows


def train_phone_head(
    model: DualEncoder,
    train: FeatureCache,
    dev: FeatureCache | None,
    distractors: list[str],
    cfg: PhoneTrainConfig,
    out_dir: Path,
    progress: bool = True,
) -> dict:
    """Train ``model``'s phone head in place and choose its rescore weight on dev.
    Returns the figures for metrics.json (history, dev PER, weight table)."""
    trainer = PhoneTrainer(model, train, dev, cfg, out_dir)
    history = trainer.fit(progress)
    # The per-step history goes to its own file (train.finish); metrics keep the last step.
    out: dict = {"phone_config": asdict(cfg), "phone_history": history, "phone_final": history[-1]}
    if dev is not None:
        weight, table = tune_rescore_weight(model, dev, distractors, cfg.weights, cfg.tune_size)
        out["rescore_weight"] = weight
        out["rescore_weights_dev"] = table
    (Path(out_dir) / STATE_NAME).unlink(missing_ok=True)
    return out
