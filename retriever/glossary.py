"""Glossaries: entries, file formats (JSONL, CSV/TSV, ACL JSON, TBX) and the versioned store.

Every change is a new version written beside the old one (temp file, fsync, rename,
fsync of the directory), so a crash in the middle of a write leaves the last committed
version readable and nothing half-written is ever loaded.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import tempfile
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from rasst.formats import format_for

from .rpc import shown

logger = logging.getLogger(__name__)

GLOSSARY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # matched in full
MAX_ID_CHARS = 256
MAX_TERM_CHARS = 256
MAX_ALIASES = 32
MAX_ENTRIES = 2_000_000
LANG = re.compile(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*")  # matched in full
FORMATS = ("jsonl", "csv", "tsv", "acl_json", "tbx")


class GlossaryError(ValueError):
    """A bad glossary or entry; ``field`` names where (e.g. 'entries[3].term' or 'content line 7')."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Entry:
    id: str
    term: str
    translations: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    def forms(self) -> list[str]:
        """Every spoken form that maps to this entry: the term, then its aliases."""
        return [self.term, *self.aliases]

    def to_dict(self) -> dict:
        d: dict = {"id": self.id, "term": self.term, "translations": dict(self.translations)}
        if self.aliases:
            d["aliases"] = list(self.aliases)
        return d


@dataclass(frozen=True)
class Glossary:
    glossary_id: str
    version: int
    entries: tuple[Entry, ...]
    update_time: float

    @property
    def languages(self) -> list[str]:
        return sorted({lang for e in self.entries for lang in e.translations})


def validate_glossary_id(gid: str, field_name: str = "glossary_id") -> str:
    if not isinstance(gid, str) or not GLOSSARY_ID.fullmatch(gid):
        raise GlossaryError(
            field_name,
            f"must be 1..64 characters of [A-Za-z0-9._-] not starting with '.', '_' or '-', got {shown(gid)}",
        )
    return gid


def _clean(text: object, where: str, what: str, max_chars: int, required: bool = True) -> str:
    if not isinstance(text, str):
        raise GlossaryError(where, f"{what} must be a string, got {type(text).__name__}")
    t = unicodedata.normalize("NFC", text).strip()
    if required and not t:
        raise GlossaryError(where, f"{what} must not be empty")
    if len(t) > max_chars:
        raise GlossaryError(where, f"{what} must be at most {max_chars} characters, got {len(t)}")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in t):
        raise GlossaryError(where, f"{what} must not contain control characters or lone surrogates")
    return t


def make_entry(raw: dict, where: str) -> Entry:
    """Validate one entry given as a dict {id, term, translations, aliases}."""
    if not isinstance(raw, dict):
        raise GlossaryError(where, f"expected an object, got {type(raw).__name__}")
    term = _clean(raw.get("term"), f"{where}.term", "term", MAX_TERM_CHARS)
    eid = raw.get("id") or term.lower()
    eid = _clean(eid, f"{where}.id", "id", MAX_ID_CHARS)
    tr = raw.get("translations") or {}
    if not isinstance(tr, dict):
        raise GlossaryError(f"{where}.translations", "must be an object {language: text}")
    translations = {}
    for lang, text in tr.items():
        if not isinstance(lang, str) or not LANG.fullmatch(lang):
            raise GlossaryError(
                f"{where}.translations",
                f"language code {shown(lang)} is not like 'de', 'zh' or 'pt-BR'",
            )
        translations[lang] = _clean(
            text, f"{where}.translations[{lang}]", "translation", 1024, required=False
        )
    aliases_raw = raw.get("aliases") or []
    if isinstance(aliases_raw, str):
        aliases_raw = [a for a in aliases_raw.split("|")]
    if not isinstance(aliases_raw, list | tuple) or len(aliases_raw) > MAX_ALIASES:
        raise GlossaryError(f"{where}.aliases", f"must be a list of at most {MAX_ALIASES} strings")
    aliases = []
    for j, a in enumerate(aliases_raw):
        a = _clean(a, f"{where}.aliases[{j}]", "alias", MAX_TERM_CHARS, required=False)
        if a and a.lower() != term.lower() and a not in aliases:
            aliases.append(a)
    return Entry(eid, term, translations, tuple(aliases))


def check_unique(entries: list[Entry], where: str = "entries") -> list[Entry]:
    if len(entries) > MAX_ENTRIES:
        raise GlossaryError(where, f"at most {MAX_ENTRIES} entries, got {len(entries)}")
    seen: dict[str, int] = {}
    for i, e in enumerate(entries):
        if e.id in seen:
            raise GlossaryError(
                f"{where}[{i}].id", f"duplicate id {shown(e.id)} (first at {where}[{seen[e.id]}])"
            )
        seen[e.id] = i
    return entries


# --------------------------------------------------------------------------- formats


def parse(content: bytes | str, fmt: str) -> list[Entry]:
    """Parse a glossary file. Raises GlossaryError naming the line or record."""
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise GlossaryError("format", f"must be one of {list(FORMATS)}, got {shown(fmt)}")
    if fmt == "tbx":  # XML names its own encoding: the parser reads the bytes
        return check_unique(parse_tbx(content), "content")
    if isinstance(content, bytes):
        try:
            content = content.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise GlossaryError("content", f"not UTF-8 text (byte {e.start})") from e
    parser = {
        "jsonl": parse_jsonl,
        "csv": parse_csv,
        "tsv": lambda c: parse_csv(c, "\t"),
        "acl_json": parse_acl_json,
    }[fmt]
    return check_unique(parser(content), "content")


def _json(text: str, where: str):
    """``json.loads`` whose every failure is a GlossaryError naming ``where``: malformed
    JSON, nesting too deep, integers too long to convert."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise GlossaryError(where, f"not valid JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:
        raise GlossaryError(where, "JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more than 4,300 digits
        raise GlossaryError(where, f"not usable JSON: {str(e)[:120]}") from None


def parse_jsonl(text: str) -> list[Entry]:
    out = []
    # Lines end at "\n" (and "\r\n") only: U+2028 and friends are legal inside JSON strings.
    for i, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        out.append(make_entry(_json(line, f"content line {i}"), f"content line {i}"))
    return out


def parse_csv(text: str, delimiter: str = ",") -> list[Entry]:
    """Header row: ``term`` (required), ``id``, ``aliases`` ('|'-separated), one column per language."""
    try:
        rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    except csv.Error as e:
        raise GlossaryError("content", f"malformed CSV: {e}") from e
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    if "term" not in header:
        raise GlossaryError("content line 1", f"header needs a 'term' column, got {header}")
    out = []
    for i, r in enumerate(rows[1:], 2):
        if len(r) != len(header):
            raise GlossaryError(
                f"content line {i}", f"has {len(r)} columns, header has {len(header)}"
            )
        rec = dict(zip(header, r, strict=True))
        raw = {
            "id": rec.pop("id", "") or None,
            "term": rec.pop("term"),
            "aliases": [a for a in rec.pop("aliases", "").split("|") if a.strip()],
            "translations": {k: v for k, v in rec.items() if v.strip()},
        }
        out.append(make_entry(raw, f"content line {i}"))
    return out


def parse_acl_json(text: str) -> list[Entry]:
    """The ACL 60/60 glossary dict: {key: {"term", "target_translations", "full_form", "is_acronym"}}."""
    data = _json(text, "content")
    if not isinstance(data, dict):
        raise GlossaryError("content", "ACL JSON must be an object keyed by term")
    out = []
    for key, v in data.items():
        where = f"content[{shown(key)}]"
        if not isinstance(v, dict):
            raise GlossaryError(where, "each value must be an object")
        aliases = []
        full = v.get("full_form")
        if isinstance(full, str) and full.strip():
            aliases.append(full)
        raw = {
            "id": key,
            "term": v.get("term", key),
            "translations": v.get("target_translations") or {},
            "aliases": aliases,
        }
        out.append(make_entry(raw, where))
    return out


def parse_tbx(content: bytes | str) -> list[Entry]:
    """TBX (ISO 30042): each termEntry -> one entry; the source language's first term is the
    entry's term, its other terms aliases, other languages translations.

    Parsed with defusedxml, which refuses any DTD and entity declaration whatever the
    document's encoding (a text check for ``<!ENTITY`` misses UTF-16)."""
    from xml.etree.ElementTree import ParseError

    import defusedxml.ElementTree as DET
    from defusedxml import DefusedXmlException

    try:
        root = DET.fromstring(content, forbid_dtd=True)
    except DefusedXmlException as e:
        raise GlossaryError(
            "content", f"TBX with a DTD or entity declarations is refused ({type(e).__name__})"
        ) from None
    except (ParseError, ValueError) as e:
        raise GlossaryError("content", f"malformed TBX XML: {e}") from None

    def local(tag: str) -> str:
        return tag.rsplit("}", 1)[-1]

    xml_lang = "{http://www.w3.org/XML/1998/namespace}lang"
    src_lang = None
    for el in root.iter():
        if local(el.tag) in ("martif", "tbx") and el.get(xml_lang):
            src_lang = el.get(xml_lang).lower()
            break
    out = []
    for n, te in enumerate(
        (el for el in root.iter() if local(el.tag) in ("termEntry", "conceptEntry")), 1
    ):
        by_lang: dict[str, list[str]] = {}
        for ls in (el for el in te if local(el.tag) in ("langSet", "langSec")):
            lang = (ls.get(xml_lang) or ls.get("lang") or "").lower()
            terms = [
                t.text.strip()
                for t in ls.iter()
                if local(t.tag) == "term" and t.text and t.text.strip()
            ]
            if lang and terms:
                by_lang.setdefault(lang, []).extend(terms)
        where = f"content termEntry {n}"
        if not by_lang:
            raise GlossaryError(where, "has no langSet with a term")
        src = (
            src_lang if src_lang in by_lang else ("en" if "en" in by_lang else next(iter(by_lang)))
        )
        src_terms = by_lang.pop(src)
        raw = {
            "id": te.get("id") or None,
            "term": src_terms[0],
            "aliases": src_terms[1:],
            "translations": {lang: ts[0] for lang, ts in by_lang.items()},
        }
        out.append(make_entry(raw, where))
    return out


# --------------------------------------------------------------------------- store


def glossary_bytes(g: Glossary) -> bytes:
    """A version as the store keeps it on disk (UTF-8 JSON)."""
    body = {
        "glossary_id": g.glossary_id,
        "version": g.version,
        "update_time": g.update_time,
        "entries": [e.to_dict() for e in g.entries],
    }
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def read_glossary(p: Path) -> Glossary:
    """A version written by :func:`glossary_bytes`; raises OSError, ValueError, KeyError
    or TypeError for a file that is not one."""
    d = json.loads(p.read_text(encoding="utf-8"))
    entries = tuple(make_entry(e, f"{p.name} entries[{i}]") for i, e in enumerate(d["entries"]))
    return Glossary(
        validate_glossary_id(d["glossary_id"]), int(d["version"]), entries, float(d["update_time"])
    )


class GlossaryStore:
    """Versioned glossaries persisted under ``root/glossaries/{id}.json``.

    Thread-safe; callers serialise mutations of one glossary (the server holds an
    admin lock) but reads never block on writes. Versions never repeat for an id: a
    deleted glossary leaves ``{id}.deleted`` holding its last version, and one created
    again under the same id continues from there.
    """

    def __init__(self, root: str | Path):
        self.dir = Path(root) / "glossaries"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._live: dict[str, Glossary] = {}
        self._deleted: dict[str, int] = {}  # id -> last version of a deleted glossary
        self._load()

    def _path(self, gid: str) -> Path:
        validate_glossary_id(gid)
        p = (self.dir / f"{gid}.json").resolve()
        if p.parent != self.dir.resolve():  # belt and braces: ids cannot escape the data dir
            raise GlossaryError("glossary_id", f"{shown(gid)} resolves outside the data directory")
        return p

    def _load(self) -> None:
        for stale in self.dir.glob(".*.tmp*"):
            logger.warning("removing partial write %s left by a crash", stale.name)
            stale.unlink(missing_ok=True)
        for p in sorted(self.dir.glob("*.json")):
            try:
                g = read_glossary(p)
            except (OSError, ValueError, KeyError, TypeError) as e:
                logger.error("skipping unreadable glossary file %s: %s", p, e)
                continue
            self._live[g.glossary_id] = g
        for p in sorted(self.dir.glob("*.deleted")):
            try:
                self._deleted[validate_glossary_id(p.stem)] = int(
                    json.loads(p.read_text(encoding="utf-8"))["version"]
                )
            except (OSError, ValueError, KeyError, TypeError) as e:
                logger.error("skipping unreadable tombstone %s: %s", p, e)
        logger.info("loaded %d glossaries from %s", len(self._live), self.dir)

    def _next_version(self, gid: str) -> int:
        old = self._live.get(gid)
        return max(old.version if old else 0, self._deleted.get(gid, 0)) + 1

    def get(self, gid: str) -> Glossary | None:
        return self._live.get(gid)

    def list(self) -> list[Glossary]:
        return [self._live[k] for k in sorted(self._live)]

    def prepare_put(self, gid: str, entries: list[Entry]) -> Glossary:
        """The next version replacing all entries (not yet committed)."""
        return Glossary(
            validate_glossary_id(gid),
            self._next_version(gid),
            tuple(check_unique(entries)),
            time.time(),
        )

    def prepare_patch(
        self, gid: str, upserts: list[Entry], delete_ids: list[str], expected_version: int = 0
    ) -> Glossary:
        old = self._live.get(gid)
        if old is None:
            raise KeyError(gid)
        if expected_version and expected_version != old.version:
            raise VersionConflict(
                f"glossary {shown(gid)} is at version {old.version}, expected_version was {expected_version}"
            )
        by_id = {e.id: e for e in old.entries}
        for i, d in enumerate(delete_ids):
            if d not in by_id:
                raise LookupError(f"delete_ids[{i}]: entry {shown(d)} not in glossary {shown(gid)}")
            del by_id[d]
        check_unique(list(upserts), "upserts")
        for e in upserts:
            by_id[e.id] = e
        return Glossary(gid, old.version + 1, tuple(by_id.values()), time.time())

    def commit(self, g: Glossary) -> None:
        """Persist atomically, then make it the live version."""
        path = self._path(g.glossary_id)
        with self._lock:
            atomic_write(path, glossary_bytes(g))
            self._live[g.glossary_id] = g
            if self._deleted.pop(g.glossary_id, None) is not None:
                path.with_suffix(".deleted").unlink(missing_ok=True)

    def delete(self, gid: str) -> bool:
        path = self._path(gid)
        with self._lock:
            if gid not in self._live:
                return False
            last = self._live[gid].version
            atomic_write(path.with_suffix(".deleted"), json.dumps({"version": last}).encode())
            self._deleted[gid] = last
            path.unlink(missing_ok=True)
            _fsync_dir(path.parent)
            del self._live[gid]
            return True


class VersionConflict(RuntimeError):
    pass


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably, readable by the owner only (0600):
    temp file, fsync, rename, fsync of the directory. A crash leaves the old file or the
    new one, never a partial one (partial temp files start with '.' and end in '.tmp...')."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_file(path: str | Path, fmt: str | None = None) -> list[Entry]:
    """Read a glossary file, guessing the format from the extension when not given."""
    p = Path(path)
    if fmt is None:
        fmt = guess_format(p)
    return parse(p.read_bytes(), fmt)


def guess_format(p: Path) -> str:
    guess = format_for(p)
    if guess is None:
        raise GlossaryError(
            "path", f"cannot tell the format of {p.name}; use one of {list(FORMATS)}"
        )
    return guess
