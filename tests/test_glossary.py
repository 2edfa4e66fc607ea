from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from rasst.retriever.glossary import (
    GlossaryError,
    GlossaryStore,
    VersionConflict,
    guess_format,
    load_file,
    make_entry,
    parse,
    validate_glossary_id,
)

ACL = Path(__file__).resolve().parents[1] / "retriever" / "demo" / "acl6060"

TBX = """<?xml version="1.0" encoding="UTF-8"?>
<martif type="TBX" xml:lang="en"><text><body>
  <termEntry id="t1">
    <langSet xml:lang="en"><tig><term>attention mechanism</term></tig><tig><term>attention</term></tig></langSet>
    <langSet xml:lang="de"><tig><term>Aufmerksamkeitsmechanismus</term></tig></langSet>
  </termEntry>
  <termEntry id="t2">
    <langSet xml:lang="en"><ntig><termGrp><term>BLEU score</term></termGrp></ntig></langSet>
    <langSet xml:lang="zh"><tig><term>BLEU分数</term></tig></langSet>
  </termEntry>
</body></text></martif>"""


def test_jsonl_csv_tsv_tbx_agree():
    jsonl = '{"id": "t1", "term": "attention mechanism", "translations": {"de": "Aufmerksamkeitsmechanismus"}, "aliases": ["attention"]}\n'
    csv_text = "id,term,aliases,de\nt1,attention mechanism,attention,Aufmerksamkeitsmechanismus\n"
    a = parse(jsonl, "jsonl")[0]
    b = parse(csv_text, "csv")[0]
    c = parse(csv_text.replace(",", "\t"), "tsv")[0]
    d = parse(TBX, "tbx")[0]
    assert a == b == c == d
    assert a.forms() == ["attention mechanism", "attention"]


def test_tbx_second_entry_and_languages():
    entries = parse(TBX.encode(), "tbx")
    assert [e.id for e in entries] == ["t1", "t2"]
    assert entries[1].translations == {"zh": "BLEU分数"}


def test_acl_json_reads_every_acl_glossary():
    total = 0
    for f in sorted(ACL.glob("*.json")):
        entries = load_file(f)
        raw = json.loads(f.read_text())
        assert len(entries) == len(raw)
        assert all(set(e.translations) == {"zh", "de", "ja"} for e in entries)
        total += len(entries)
    assert total == 286


@pytest.mark.parametrize(
    "content,fmt,where",
    [
        ('{"term": "a"}\n{not json}\n', "jsonl", "content line 2"),
        ('{"id": "x"}\n', "jsonl", "content line 1.term"),
        (
            '{"term": "x", "translations": {"not a lang!": "y"}}\n',
            "jsonl",
            "content line 1.translations",
        ),
        ('{"term": "x", "id": "same"}\n{"term": "y", "id": "same"}\n', "jsonl", "content[1].id"),
        ("id,term,de\n1,a\n", "csv", "content line 2"),
        ("id,word\n1,a\n", "csv", "content line 1"),
        ("<martif><body><termEntry>", "tbx", "content"),
        ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><martif/>', "tbx", "content"),
        ("[1, 2]", "acl_json", "content"),
        (b"\xff\xfe\x00bad", "jsonl", "content"),
        ("x", "yaml", "format"),
    ],
)
def test_malformed_files_name_the_place(content, fmt, where):
    with pytest.raises(GlossaryError) as e:
        parse(content, fmt)
    assert e.value.field == where


def test_entry_limits():
    with pytest.raises(GlossaryError, match="at most 256"):
        make_entry({"term": "x" * 300}, "e")
    with pytest.raises(GlossaryError, match="control characters"):
        make_entry({"term": "a\x00b"}, "e")
    assert make_entry({"term": "  Café  "}, "e").term == "Café"


def test_guess_format():
    assert guess_format(Path("g.tbx")) == "tbx"
    with pytest.raises(GlossaryError):
        guess_format(Path("g.yaml"))


def _entries(n, prefix="t"):
    return [
        make_entry(
            {"id": f"{prefix}{i}", "term": f"term {i}", "translations": {"de": f"Begriff {i}"}}, "e"
        )
        for i in range(n)
    ]


def test_store_versions_persist_and_reload(tmp_path):
    s = GlossaryStore(tmp_path)
    s.commit(s.prepare_put("g1", _entries(3)))
    s.commit(s.prepare_patch("g1", _entries(1, "new"), ["t0"]))
    g = s.get("g1")
    assert g.version == 2 and sorted(e.id for e in g.entries) == ["new0", "t1", "t2"]
    again = GlossaryStore(tmp_path)
    assert again.get("g1").version == 2 and again.get("g1").entries == g.entries
    with pytest.raises(VersionConflict):
        s.prepare_patch("g1", [], [], expected_version=1)
    with pytest.raises(LookupError):
        s.prepare_patch("g1", [], ["missing"])
    assert s.delete("g1") and GlossaryStore(tmp_path).get("g1") is None


def test_crash_leftovers_are_ignored(tmp_path):
    s = GlossaryStore(tmp_path)
    s.commit(s.prepare_put("g1", _entries(2)))
    # A writer killed before its rename leaves a temp file: it must never be loaded.
    partial = s.dir / ".g1.json.tmpabc"
    partial.write_text('{"glossary_id": "g1", "version": 3, "entr')
    (s.dir / "broken.json").write_text("{half")
    again = GlossaryStore(tmp_path)
    assert again.get("g1").version == 1
    assert again.get("broken") is None
    assert not partial.exists()


@pytest.mark.parametrize("gid", ["../etc", "a/b", "", ".hidden", "x" * 65, "a b", "..", "/abs"])
def test_glossary_ids_cannot_escape(tmp_path, gid):
    s = GlossaryStore(tmp_path)
    with pytest.raises(GlossaryError):
        s.prepare_put(gid, _entries(1))
    assert os.listdir(s.dir) == []


_BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE martif [<!ENTITY a "aaaaaaaaaa">'
    '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
    '<martif xml:lang="en"><text><body><termEntry><langSet xml:lang="en"><tig><term>&c;</term>'
    "</tig></langSet></termEntry></body></text></martif>"
)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16-le", "utf-16-be", "utf-16", "utf-32-le"])
def test_tbx_entities_are_refused_in_every_encoding(encoding):
    # expat reads no UTF-32: that one is refused as malformed, the others for their DTD.
    match = "malformed" if encoding.startswith("utf-32") else "DTD or entity"
    with pytest.raises(GlossaryError, match=match) as e:
        parse(_BILLION_LAUGHS.encode(encoding), "tbx")
    assert e.value.field == "content"


@pytest.mark.parametrize(
    "content,where,match",
    [
        ('{"term": ' * 100_000 + "1" + "}" * 100_000, "content line 1", "nested too deeply"),
        ('{"term": "x", "n": ' + "9" * 5000 + "}", "content line 1", "not usable JSON"),
        ('{"term": "a\\ud800b"}', "content line 1.term", "lone surrogates"),
        (
            '{"term": "x", "translations": {"de\\n": "y"}}',
            "content line 1.translations",
            "not like",
        ),
        (
            '{"term": "x", "translations": {"de": "y\\ud800"}}',
            "content line 1.translations[de]",
            "surrogates",
        ),
    ],
)
def test_hostile_json_is_a_glossary_error_naming_the_line(content, where, match):
    with pytest.raises(GlossaryError, match=match) as e:
        parse(content, "jsonl")
    assert e.value.field == where


def test_jsonl_lines_end_at_newlines_only():
    """U+2028 is legal inside a JSON string; splitlines() would cut the line there."""
    (e,) = parse('{"term": "line\u2028separator", "translations": {"de": "x\u2029y"}}\n', "jsonl")
    assert e.term == "line\u2028separator"
    (a,) = parse('{"BLEU": {"term": "BLEU\u2028", "target_translations": {"de": "B"}}}', "acl_json")
    assert a.id == "BLEU"


@pytest.mark.parametrize("gid", ["abc\n", "abc\r", "a\nb", "abc\x00"])
def test_ids_are_matched_in_full(tmp_path, gid):
    s = GlossaryStore(tmp_path)
    with pytest.raises(GlossaryError):
        s.prepare_put(gid, _entries(1))
    assert os.listdir(s.dir) == []


def test_a_huge_id_is_echoed_short():
    with pytest.raises(GlossaryError) as e:
        validate_glossary_id("x" * 100_000)
    assert len(str(e.value)) < 300


def test_versions_never_repeat_after_delete_and_create(tmp_path):
    s = GlossaryStore(tmp_path)
    s.commit(s.prepare_put("g", _entries(1)))
    s.commit(s.prepare_put("g", _entries(2)))
    assert s.delete("g")
    again = GlossaryStore(tmp_path)  # the tombstone survives a restart
    g = again.prepare_put("g", _entries(1))
    assert g.version == 3
    again.commit(g)
    assert not (again.dir / "g.deleted").exists()
    assert GlossaryStore(tmp_path).get("g").version == 3
