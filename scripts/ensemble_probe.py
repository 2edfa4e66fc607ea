"""Offline probe: does averaging several checkpoints' scores retrieve better than one?

Each checkpoint scores every glossary entry for an occurrence by its best covering window
(as ``rasst eval`` does); the ensemble averages those scores per entry. Prints R@1 / R@10 at
each glossary size for every checkpoint alone and for the ensemble of all of them. Not a
serving mode (yet): README's ablation has the numbers and what serving one would cost.

    python scripts/ensemble_probe.py --manifest data/corpus/test_heldout/manifest.jsonl \\
        --distractors data/corpus/terms/train.txt \\
        retriever/default_checkpoint runs/v9_base
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--distractors", type=Path, required=True)
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    import torch

    from retriever.g2p import normalize_term
    from retriever.model import DualEncoder
    from training.data import read_lines
    from training.evaluate import build_glossary, encode_occurrences
    from training.features import cached

    torch.set_num_threads(2)
    sizes = [int(s) for s in args.sizes.split(",")]
    distractors = read_lines(args.distractors)
    occs, glossaries, names = [], [], []
    for ckpt in args.checkpoints:
        model = DualEncoder.from_pretrained(ckpt)
        cache = cached(
            args.manifest, model.config.frontend, args.manifest.parent / "cache", args.workers
        )
        occ = encode_occurrences(model, cache)
        terms = build_glossary(list(dict.fromkeys(occ.terms)), distractors, max(sizes))
        occs.append(occ)
        glossaries.append(model.encode_terms(terms, progress=True))
        names.append(ckpt.name)
    if any(o.terms != occs[0].terms for o in occs):
        print("checkpoints saw different occurrences", file=sys.stderr)
        return 1
    pos = {normalize_term(t).lower(): i for i, t in enumerate(terms)}
    target = [pos[normalize_term(t).lower()] for t in occs[0].terms]
    for size in sizes:
        ranks: dict[str, list[int]] = {n: [] for n in [*names, "ensemble"]}
        for i, t in enumerate(target):
            scores = [
                (o.vectors[i] @ g[:size].T).max(0) for o, g in zip(occs, glossaries, strict=True)
            ]
            for name, s in [
                *zip(names, scores, strict=True),
                ("ensemble", np.mean(scores, axis=0)),
            ]:
                ranks[name].append(int((s > s[t]).sum()) + 1)
        row = {
            n: f"{np.mean(np.array(r) <= 1):.3f} / {np.mean(np.array(r) <= 10):.3f}"
            for n, r in ranks.items()
        }
        print(f"{size:>7,}  R@1 / R@10  " + "  ".join(f"{n}: {v}" for n, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
