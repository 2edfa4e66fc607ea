"""Contrastive training of the dual encoder, in one process or under torchrun (DDP).

The front-end is frozen, so its frames are precomputed (training/features.py) and a
step costs only the speech head and the term encoder. Each step draws utterances,
cuts a random window around each term span (multi-scale, jittered edges), and
contrasts them with their terms, mined phonetic neighbours, text-only distractor
terms and a memory of earlier term vectors (training/loss.py).

Under ``torchrun --nproc-per-node N`` every rank draws its own batches and gradients
are averaged by DDP (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from rasst.retriever.g2p import units
from rasst.retriever.model import DualEncoder, FrontendConfig, ModelConfig, checkpoint_id

from .evaluate import CALIBRATION_SIZES, calibrate_thresholds
from .features import FeatureCache
from .loss import DualContrastiveLoss
from .phones import PhoneTrainConfig, train_phone_head
from .prior import PriorConfig, fit_prior
from .streaming_eval import (
    AGREEMENTS,
    COHORT_WEIGHT,
    LENGTH_PENALTIES,
    LENGTH_REF,
    calibrate_streaming,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    # Optimisation steps.
    steps: int = 2500
    # Utterances (audio anchors) per step and rank.
    batch_size: int = 256
    # Text-only distractor terms added per step as extra negatives.
    text_negatives: int = 128
    # Mined phonetic neighbours per seed term (hard negatives); 0 turns mining off. Off by
    # default: with mining (2) and background windows (64) held-out R@10 at 10K was 0.870;
    # without both, 0.918 (an ablation on the same corpus).
    hard_negatives: int = 0
    # Re-mine neighbours every this many steps with the current term encoder.
    mine_every: int = 500
    # Background (no-term) windows per step, negatives for every term (0 = off).
    background: int = 0
    # Cross-batch memory of term vectors (0 = off).
    memory_size: int = 16384
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 100
    temperature: float = 0.05
    # Max window-edge jitter as a fraction of the span length (plus 2 frames).
    jitter: float = 0.2
    # Evaluate on dev every this many steps (0 = only at the end).
    eval_every: int = 500
    # Glossary size for dev recall.
    eval_size: int = 1000
    # Save a resumable training state every this many steps.
    save_every: int = 500
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.temperature <= 1:
            raise ValueError(f"temperature must be in (0, 1], got {self.temperature}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")


@dataclass
class TrainData:
    train: FeatureCache
    dev: FeatureCache | None
    distractors: list[str]  # text-only terms (never spoken in dev/test)


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def build_vocab(unit_strings: list[str]) -> tuple[str, ...]:
    return tuple(sorted({ch for s in unit_strings for ch in s}))


class Trainer:
    def __init__(self, model_cfg: ModelConfig, cfg: TrainConfig, data: TrainData, out_dir: Path):
        self.cfg = cfg
        self.data = data
        self.out = Path(out_dir)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        random.seed(cfg.seed + self.rank)
        np.random.seed(cfg.seed + self.rank)
        torch.manual_seed(cfg.seed)  # same init on every rank

        # Terms: the spoken ones (with audio) and text-only distractors, with pronunciations.
        self.spoken = sorted(set(data.train.occ_term))
        spoken_set = set(self.spoken)
        self.text_only = [t for t in data.distractors if t not in spoken_set]
        all_terms = self.spoken + self.text_only
        unit_strs = units(all_terms, model_cfg.text_unit, model_cfg.g2p_language)
        self.units = dict(zip(all_terms, unit_strs, strict=True))
        if not model_cfg.text_vocab:
            model_cfg = replace(model_cfg, text_vocab=build_vocab(unit_strs))
        # Label = pronunciation: homophones are one class (false-negative masking).
        label_of: dict[str, int] = {}
        self.label = {t: label_of.setdefault(self.units[t], len(label_of)) for t in all_terms}
        self.occ_by_term: dict[str, list[int]] = {}
        for i, t in enumerate(data.train.occ_term):
            self.occ_by_term.setdefault(t, []).append(i)

        self.model = DualEncoder(model_cfg)
        self.module = self.model
        if dist.is_initialized():
            self.model = torch.nn.parallel.DistributedDataParallel(self.model)
        self.loss = DualContrastiveLoss(cfg.temperature, cfg.memory_size, model_cfg.embed_dim)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.step = 0
        self.history: list[dict] = []
        self.neighbours: dict[str, list[str]] = {}

    # -- batches
    def _window(self, occ: int) -> tuple[int, int, int]:
        c = self.data.train
        u = int(c.occ_utt[occ])
        n = int(c.offsets[u + 1] - c.offsets[u])
        a, b = (int(x) for x in c.occ_span[occ])
        j = self.cfg.jitter * (b - a) + 2
        s = int(round(a + random.uniform(-j, j)))
        e = int(round(b + random.uniform(-j, j)))
        if random.random() < 0.3:  # snap to one of the serving window lengths, centred
            w = min(
                self.module.config.window_frames,
                key=lambda L: abs(L - (b - a)) + random.random() * 5,
            )
            mid = (a + b) // 2
            s, e = mid - w // 2, mid - w // 2 + w
        s = min(max(0, s), n - 3)
        e = max(min(n, e), s + 3)
        return u, s, e

    def _background_window(self, occ: int) -> tuple[int, int, int] | None:
        """A window before or after the term span that overlaps it by at most 10%."""
        c = self.data.train
        u = int(c.occ_utt[occ])
        n = int(c.offsets[u + 1] - c.offsets[u])
        a, b = (int(x) for x in c.occ_span[occ])
        w = random.choice(self.module.config.window_frames)
        slack = max(1, (b - a) // 10)
        room = [(0, a + slack - w), (b - slack, n - w)]  # start ranges left / right of the span
        room = [(lo, hi) for lo, hi in room if hi >= lo and lo >= 0]
        if not room:
            return None
        lo, hi = random.choice(room)
        s = random.randint(lo, hi)
        return u, s, s + w

    def _batch(self):
        c = self.data.train
        B = self.cfg.batch_size
        h = self.cfg.hard_negatives
        seeds = random.sample(self.spoken, min(len(self.spoken), B // 2 if h else B))
        terms = list(seeds)
        extra_text: list[str] = []
        for t in seeds:
            for nb in self.neighbours.get(t, [])[:h]:
                if nb in self.occ_by_term and len(terms) < B:
                    terms.append(nb)  # hard negative with audio of its own
                else:
                    extra_text.append(nb)
        while len(terms) < B and len(terms) < len(self.spoken):
            terms.append(random.choice(self.spoken))
        occs = [random.choice(self.occ_by_term[t]) for t in terms]
        pooled = np.empty((len(occs), self.module.speech.norm.normalized_shape[0]), np.float32)
        for i, occ in enumerate(occs):
            u, st, en = self._window(occ)
            pooled[i] = pool_one(c.utt_frames(u), st, en, self.module.config.pool_segments)
        # Background windows: carrier speech around the term, with no term in it. They are
        # negatives for every term (label < 0), teaching the encoder that speech which is
        # not a glossary term should score low: that is what the threshold relies on.
        bg = []
        for occ in random.sample(occs, min(len(occs), self.cfg.background)):
            w = self._background_window(occ)
            if w is not None:
                u, st, en = w
                bg.append(pool_one(c.utt_frames(u), st, en, self.module.config.pool_segments))
        if bg:
            pooled = np.concatenate([pooled, np.stack(bg)])
        if self.text_only and self.cfg.text_negatives:
            extra_text += random.sample(
                self.text_only, min(self.cfg.text_negatives, len(self.text_only))
            )
        text_terms = list(dict.fromkeys(terms + extra_text))
        a_labels = torch.tensor([self.label[t] for t in terms] + [-1 - i for i in range(len(bg))])
        t_labels = torch.tensor([self.label[t] for t in text_terms])
        return torch.from_numpy(pooled), a_labels, [self.units[t] for t in text_terms], t_labels

    # -- mining
    @torch.no_grad()
    def mine(self) -> None:
        """Nearest pronunciations (by the current term encoder) of each spoken term."""
        if not self.cfg.hard_negatives:
            return
        from rasst.retriever.index import TermIndex

        pool = self.spoken + random.sample(self.text_only, min(len(self.text_only), 50_000))
        vec = self._embed_units([self.units[t] for t in pool])
        index = TermIndex(vec, np.arange(len(pool)))
        D, I = index.search(vec[: len(self.spoken)], 8)
        self.neighbours = {
            t: [pool[j] for j in I[i] if j >= 0 and self.label[pool[j]] != self.label[t]][
                : self.cfg.hard_negatives
            ]
            for i, t in enumerate(self.spoken)
        }

    @torch.no_grad()
    def _embed_units(self, unit_strs: list[str], bs: int = 1024) -> np.ndarray:
        m = self.module
        m.eval()
        out = []
        for i in range(0, len(unit_strs), bs):
            ids, lengths = m.tokenize(unit_strs[i : i + bs])
            out.append(m.text(ids, lengths).numpy())
        m.train()
        return np.concatenate(out)

    # -- loop
    def lr_at(self, step: int) -> float:
        if step < self.cfg.warmup:
            return self.cfg.lr * (step + 1) / self.cfg.warmup
        p = (step - self.cfg.warmup) / max(1, self.cfg.steps - self.cfg.warmup)
        return self.cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))

    def train_step(self) -> dict:
        self.model.train()
        pooled, a_labels, text_units, t_labels = self._batch()
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.step)
        m = self.module
        ids, lengths = m.tokenize(text_units)
        audio, text = self.model(pooled, ids, lengths)
        out = self.loss(audio, a_labels, text, t_labels)
        self.opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.opt.step()
        self.step += 1
        return {k: float(v.detach()) for k, v in out.items()}

    def evaluate_dev(self) -> dict:
        from .evaluate import evaluate

        if self.data.dev is None:
            return {}
        r = evaluate(
            self.module, self.data.dev, self.text_only or self.spoken, [self.cfg.eval_size]
        )
        return r["sizes"][str(self.cfg.eval_size)]

    def save_state(self) -> None:
        if not _is_main():
            return
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / "train_state.pt.tmp"
        torch.save(
            {
                "model": self.module.state_dict(),
                "opt": self.opt.state_dict(),
                "step": self.step,
                "history": self.history,
                "config": self.module.config.to_dict(),
            },
            tmp,
        )
        os.replace(tmp, self.out / "train_state.pt")

    def maybe_resume(self) -> None:
        p = self.out / "train_state.pt"
        if p.exists():
            st = torch.load(p, weights_only=False)
            self.module.load_state_dict(st["model"])
            self.opt.load_state_dict(st["opt"])
            self.step = st["step"]
            self.history = st["history"]
            if _is_main():
                logger.info("resumed from %s at step %d", p, self.step)

    def fit(self, progress: bool = True) -> list[dict]:
        from tqdm import tqdm

        self.maybe_resume()
        bar = tqdm(
            total=self.cfg.steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not (progress and _is_main()),
        )
        t0 = time.time()
        while self.step < self.cfg.steps:
            if self.cfg.hard_negatives and self.step % self.cfg.mine_every == 0:
                self.mine()
            rec = self.train_step()
            rec["step"] = self.step
            if (
                self.cfg.eval_every
                and (self.step % self.cfg.eval_every == 0 or self.step == self.cfg.steps)
                and _is_main()
            ):
                rec.update({f"dev_{k}": v for k, v in self.evaluate_dev().items()})
                rec["elapsed_s"] = round(time.time() - t0, 1)
            self.history.append(rec)
            bar.update(1)
            bar.set_postfix(
                loss=f"{rec['loss']:.3f}",
                **({"dev_r10": f"{rec['dev_recall@10']:.3f}"} if "dev_recall@10" in rec else {}),
            )
            if self.cfg.save_every and self.step % self.cfg.save_every == 0:
                self.save_state()
        bar.close()
        return self.history


def pool_one(frames: np.ndarray, s: int, e: int, segments: int) -> np.ndarray:
    """One window's pooled features, as ``rasst.retriever.model.pool_windows`` computes them."""
    fr = frames[s:e].astype(np.float32)
    L = e - s
    cuts = [(k * L) // segments for k in range(segments)] + [L]
    parts = [fr.mean(0)] + [
        fr[cuts[i] : max(cuts[i + 1], cuts[i] + 1)].mean(0) for i in range(segments)
    ]
    return np.concatenate(parts)


def plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].plot(steps, [h["loss"] for h in history], lw=0.6, label="loss")
    ax[0].plot(steps, [h["a2t"] for h in history], lw=0.6, label="audio->term")
    ax[0].set_xlabel("step")
    ax[0].legend()
    ax[0].set_title("training loss")
    ev = [h for h in history if "dev_recall@10" in h]
    for k in (1, 5, 10):
        ax[1].plot(
            [h["step"] for h in ev], [h[f"dev_recall@{k}"] for h in ev], marker="o", label=f"R@{k}"
        )
    ax[1].set_ylim(0, 1.01)
    ax[1].set_xlabel("step")
    ax[1].set_title("dev recall (1K glossary)")
    ax[1].legend()
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def voice_mix(speakers: list[str]) -> dict[str, dict[str, int]]:
    """Training speech by TTS engine: utterances and distinct voices of each (speaker ids
    are ``engine:voice[:settings]``, as ``rasst data synth`` writes them)."""
    out: dict[str, dict[str, int]] = {}
    seen: dict[str, set[str]] = {}
    for sp in speakers:
        sp = sp.split("@", 1)[0]  # speed-perturbed, augmented, respelled: the same voice
        engine = sp.split(":", 1)[0] or "unknown"
        out.setdefault(engine, {"utterances": 0, "voices": 0})["utterances"] += 1
        seen.setdefault(engine, set()).add(sp)
    for engine, ids in seen.items():
        out[engine]["voices"] = len(ids)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["utterances"]))


def train_conditions(speakers: list[str]) -> dict:
    """What rooms the training audio was heard in: utterances as synthesised and in
    augmented copies (``@augK`` speakers), with the mix the copies drew from."""
    from .conditions import TRAIN_MIX, TRAIN_SNR_DB

    augmented = sum("@aug" in sp for sp in speakers)
    out = {"as_synthesised": len(speakers) - augmented, "augmented": augmented}
    if augmented:
        out["mix"] = dict(TRAIN_MIX)
        out["snr_db"] = list(TRAIN_SNR_DB)
    return out


def run(
    train_cache: FeatureCache,
    dev_cache: FeatureCache | None,
    distractors: list[str],
    out_dir: Path,
    model_cfg: ModelConfig | None = None,
    cfg: TrainConfig | None = None,
    progress: bool = True,
    calibrate: bool = True,
    phone_cfg: PhoneTrainConfig | None = None,
    prior_cfg: PriorConfig | None = None,
    dev_manifest: Path | None = None,
    agreements: tuple[tuple[float, int], ...] = AGREEMENTS,
    cohort_weight: float = COHORT_WEIGHT,
    length_penalties: tuple[float, ...] = LENGTH_PENALTIES,
) -> Path:
    """Train and write a checkpoint directory (rank 0); returns its path.

    The dual encoder first (under DDP when initialised), then on rank 0 the second
    stage's phone head (``phone_cfg``; default ``PhoneTrainConfig()``, ``steps=0`` for
    none), the specificity prior (``prior_cfg``; default ``PriorConfig()``, ``size=0`` for
    none; needs dev), then the threshold calibration (streamed from ``dev_manifest`` when
    given; ``agreements``: the window agreement candidates; ``cohort_weight``: the query
    normalisation the thresholds are calibrated with).
    """
    cfg = cfg or TrainConfig()
    model_cfg = model_cfg or ModelConfig(frontend=FrontendConfig())
    out_dir = Path(out_dir)
    trainer = Trainer(model_cfg, cfg, TrainData(train_cache, dev_cache, distractors), out_dir)
    history = trainer.fit(progress)
    if not _is_main():
        return out_dir
    # The dual encoder's last state stays on disk until the checkpoint is written, so an
    # interrupted phone stage resumes without training the encoder again.
    trainer.save_state()
    metrics = {
        "train_config": asdict(cfg),
        "final": history[-1] if history else {},
        "n_train_occurrences": len(train_cache.occ_term),
        "n_train_terms": len(trainer.spoken),
        "train_voices": voice_mix(train_cache.utt_speaker),
        "train_conditions": train_conditions(train_cache.utt_speaker),
    }
    finish(
        trainer.module.eval(),
        train_cache,
        dev_cache,
        distractors,
        out_dir,
        metrics,
        phone_cfg or PhoneTrainConfig(),
        prior_cfg or PriorConfig(),
        calibrate_sizes=(cfg.eval_size, *CALIBRATION_SIZES) if calibrate else (),
        progress=progress,
        dev_manifest=dev_manifest,
        agreements=agreements,
        cohort_weight=cohort_weight,
        length_penalties=length_penalties,
    )
    (out_dir / "history.json").write_text(json.dumps(history))
    plot_history(history, out_dir / "training_curves.png")
    (out_dir / "train_state.pt").unlink(missing_ok=True)
    return out_dir


def finish(
    model: DualEncoder,
    train_cache: FeatureCache,
    dev_cache: FeatureCache | None,
    distractors: list[str],
    out_dir: Path,
    metrics: dict,
    phone_cfg: PhoneTrainConfig,
    prior_cfg: PriorConfig | None,
    calibrate_sizes: tuple[int, ...] = CALIBRATION_SIZES,
    progress: bool = True,
    dev_manifest: Path | None = None,
    agreements: tuple[tuple[float, int], ...] = AGREEMENTS,
    cohort_weight: float = COHORT_WEIGHT,
    length_penalties: tuple[float, ...] = LENGTH_PENALTIES,
) -> Path:
    """The steps after the dual encoder: train the phone head (unless ``phone_cfg.steps``
    is 0), fit the specificity prior on train and dev (unless ``prior_cfg`` is None or its
    size 0), calibrate the thresholds on dev at ``calibrate_sizes``, write the checkpoint.

    Thresholds: the best hit F1 per dev utterance; then, with ``dev_manifest`` (the dev
    split's audio), the most hint recall at 0.9 hint precision with dev streamed through
    the real client and an in-process server, as a translator receives hints
    (``streaming_eval.calibrate_streaming``), which replaces them. Both are calibrated
    with the query normalisation ``cohort_weight`` (``scoring.Cohort``) in place.

    ``distractors``: the whole term list. The phone head and the prior take the terms
    never spoken in training from it (all spoken ones when there are none); the
    calibration pads dev's glossary from all of it, training terms included, as the
    evaluation pads its glossaries: thresholds chosen among the same kind of distractors
    keep their precision on other voices better (docs/results.md)."""
    spoken = set(train_cache.occ_term)
    unspoken = [d for d in distractors if d not in spoken] or sorted(spoken)
    if phone_cfg.steps:
        metrics.update(
            train_phone_head(model, train_cache, dev_cache, unspoken, phone_cfg, out_dir, progress)
        )
    if prior_cfg is not None and prior_cfg.size and dev_cache is not None:
        metrics.update(fit_prior(model, train_cache, dev_cache, unspoken, prior_cfg))
    if calibrate_sizes:
        model.config = replace(model.config, cohort_weight=cohort_weight)
        metrics["calibration_distractors"] = len(distractors)
    if calibrate_sizes and dev_cache is not None:
        cals = calibrate_thresholds(model, dev_cache, distractors, sizes=calibrate_sizes)
        if cals:
            metrics["calibration"] = next(
                (c for c in cals if c["glossary_size"] == calibrate_sizes[0]), cals[0]
            )
            metrics["calibration_by_size"] = cals
            model.config = replace(
                model.config,
                threshold=metrics["calibration"]["threshold"],
                thresholds=tuple((c["glossary_size"], c["threshold"]) for c in cals),
            )
    phone_history = metrics.pop("phone_history", None)
    model.save_pretrained(out_dir, metrics=metrics)
    if calibrate_sizes and dev_manifest is not None:
        if model.config.length_penalty:  # calibrated again from a model without one
            model.config = replace(model.config, length_penalty=0.0)
            model.save_pretrained(out_dir, metrics=metrics)
        cal = calibrate_streaming(
            out_dir,
            dev_manifest,
            distractors,
            calibrate_sizes,
            length_penalties=length_penalties,
            agreements=agreements,
        )
        stream = cal.points
        for prev, cur in zip(stream, stream[1:], strict=False):
            cur["threshold"] = max(cur["threshold"], prev["threshold"])  # as the offline ones
        if stream:
            metrics["streaming_calibration"] = stream
            metrics["length_penalty"] = cal.length_penalty
            metrics["agreement"] = list(cal.agreement)
            metrics["overlap_suppression"] = cal.suppression
            metrics["operating_points_dev"] = cal.candidates
            first = next((c for c in stream if c["glossary_size"] == calibrate_sizes[0]), stream[0])
            model.config = replace(
                model.config,
                threshold=first["threshold"],
                thresholds=tuple((c["glossary_size"], c["threshold"]) for c in stream),
                length_penalty=cal.length_penalty,
                length_ref=LENGTH_REF,
                agreement_penalty=cal.agreement[0],
                agreement_windows=cal.agreement[1],
                overlap_suppression=cal.suppression,
            )
            model.save_pretrained(out_dir, metrics=metrics)
    if phone_history:
        (Path(out_dir) / "phone_history.json").write_text(json.dumps(phone_history))
        plot_phone_history(phone_history, Path(out_dir) / "phone_curves.png")
    return out_dir


def add_stages(
    checkpoint: Path,
    train_cache: FeatureCache,
    dev_cache: FeatureCache | None,
    distractors: list[str],
    out_dir: Path,
    phone_cfg: PhoneTrainConfig,
    prior_cfg: PriorConfig | None = None,
    eval_size: int = 1000,
    progress: bool = True,
    dev_manifest: Path | None = None,
    agreements: tuple[tuple[float, int], ...] = AGREEMENTS,
    cohort_weight: float = COHORT_WEIGHT,
    length_penalties: tuple[float, ...] = LENGTH_PENALTIES,
) -> Path:
    """A trained checkpoint's dual encoder, unchanged, with the later stages fitted again
    and written to ``out_dir``: a newly trained phone head (``phone_cfg.steps`` > 0; the
    checkpoint must have none) or its own one kept, the specificity prior, and thresholds
    calibrated again for the final scores (with the query normalisation ``cohort_weight``)."""
    model = DualEncoder.from_pretrained(checkpoint)
    metrics_path = Path(checkpoint) / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    if phone_cfg.steps:
        if model.phone is not None:
            raise ValueError(f"{checkpoint} already has a phone head")
        metrics["phone_stage_on"] = checkpoint_id(checkpoint)
    if prior_cfg is not None and prior_cfg.size:
        metrics["prior_stage_on"] = checkpoint_id(checkpoint)
    finish(
        model,
        train_cache,
        dev_cache,
        distractors,
        out_dir,
        metrics,
        phone_cfg,
        prior_cfg,
        calibrate_sizes=(eval_size, *CALIBRATION_SIZES),
        progress=progress,
        dev_manifest=dev_manifest,
        agreements=agreements,
        cohort_weight=cohort_weight,
        length_penalties=length_penalties,
    )
    names = ["history.json", "training_curves.png"]
    if not phone_cfg.steps:
        names += ["phone_history.json", "phone_curves.png"]
    for name in names:
        src = Path(checkpoint) / name
        if src.is_file() and Path(checkpoint).resolve() != Path(out_dir).resolve():
            shutil.copyfile(src, Path(out_dir) / name)
    return Path(out_dir)


def plot_phone_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].plot([h["step"] for h in history], [h["ctc_loss"] for h in history], lw=0.6)
    ev = [h for h in history if "dev_per" in h]
    ax[0].plot([h["step"] for h in ev], [h["dev_ctc_loss"] for h in ev], marker="o", label="dev")
    ax[0].set_title("phone head CTC loss")
    ax[0].legend()
    ax[1].plot([h["step"] for h in ev], [h["dev_per"] for h in ev], marker="o")
    ax[1].set_title("dev phoneme error rate (greedy)")
    ax[1].set_ylim(0, None)
    for a in ax:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
