"""Build retriever/demo/: the demo glossary (the five ACL 60/60 paper glossaries merged)
and the demo talk (spoken by piper's en_US-joe voice, a voice rasst never trains on).

Run once by a developer: ``python scripts/make_demo_assets.py``; the outputs are committed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SRC = ROOT / "retriever" / "demo" / "acl6060"
OUT = ROOT / "retriever" / "demo"
TALK = (
    "In this talk we study semantic parsing for task oriented dialogue. "
    "Our model puts an attention mechanism on top of a transformer encoder. "
    "We report the bleu score for machine translation, "
    "and we use data augmentation for named entity recognition. "
    "Finally, the vanishing gradient problem is solved with a residual connection."
)


def main() -> int:
    from rasst.retriever.glossary import parse_acl_json

    OUT.mkdir(parents=True, exist_ok=True)
    merged: dict[str, dict] = {}
    for f in sorted(SRC.glob("*.json")):
        for e in parse_acl_json(f.read_text()):
            merged.setdefault(e.id, e.to_dict())
    (OUT / "glossary.jsonl").write_text(
        "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in merged.values())
    )
    shutil.copy(SRC / "LICENSE", OUT / "LICENSE.acl6060_glossaries")
    from rasst.retriever.audio import write_wav
    from rasst.training.voices import Voice, render

    x = render(Voice("piper", "en_US-joe-medium"), TALK)
    write_wav(
        OUT / "talk.wav",
        np.concatenate([np.zeros(8000, np.float32), x, np.zeros(8000, np.float32)]),
    )
    (OUT / "talk.txt").write_text(TALK + "\n")
    print(f"{len(merged)} entries, talk {len(x) / 16000:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
