"""The committed stubs in rasst/v1 must be exactly what `make proto` generates from proto/."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gen_proto  # noqa: E402


def drift(committed: Path, generated: Path) -> list[str]:
    """Names of files that differ (or exist on one side only)."""
    names = {p.name for p in committed.glob("*.py*")} | {p.name for p in generated.glob("*.py*")}
    bad = []
    for n in sorted(names):
        a, b = committed / n, generated / n
        if not a.exists() or not b.exists() or a.read_bytes() != b.read_bytes():
            bad.append(n)
    return bad


def test_committed_stubs_match_proto(tmp_path):
    gen_proto.generate(tmp_path)
    assert drift(ROOT / "rasst" / "v1", tmp_path) == [], (
        "stubs drifted from proto/: run `make proto` and commit"
    )


def test_drift_check_catches_a_hand_edited_stub(tmp_path):
    edited = tmp_path / "edited"
    shutil.copytree(ROOT / "rasst" / "v1", edited, ignore=shutil.ignore_patterns("__pycache__"))
    f = edited / "retrieval_pb2_grpc.py"
    f.write_text(f.read_text() + "\n# hand edit\n")
    fresh = tmp_path / "fresh"
    gen_proto.generate(fresh)
    assert drift(edited, fresh) == ["retrieval_pb2_grpc.py"]


def test_every_field_is_documented():
    """Each message field and rpc in proto/ carries a comment line above it."""
    import re

    for proto in (ROOT / "proto" / "rasst" / "v1").glob("*.proto"):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            s = line.strip()
            is_field = (
                re.match(r"^(optional |repeated )?[\w.<>, ]+ \w+ = \d+;", s) and "oneof" not in s
            )
            if is_field and not s.startswith("//"):
                prev = lines[i - 1].strip()
                # Self-explanatory ids in small request messages are allowed to share the
                # message's comment; every other field needs its own.
                if s.startswith(("string glossary_id = 1;", "bool include_entries")) or re.match(
                    r"^(SessionConfig|AudioChunk) \w+ = \d;", s
                ):
                    continue
                assert prev.startswith("//"), f"{proto.name}:{i + 1} undocumented field: {s}"
