"""``rasst glossary put|patch|get|list|delete`` and ``rasst glossary reload|stats``: the operator CLI.

The admin token comes from ``--token`` or ``RASST_ADMIN_TOKEN`` (or the file the server
wrote, via ``--token-file``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from google.protobuf.json_format import MessageToDict

from rasst.formats import format_for

from .api import Client, RasstError

CHUNK_ENTRIES = 5000  # patch batch size for large uploads (progress shown per batch)


def _token(args) -> str | None:
    if args.token:
        return args.token
    if os.environ.get("RASST_ADMIN_TOKEN"):
        return os.environ["RASST_ADMIN_TOKEN"]
    if args.token_file:
        return Path(args.token_file).read_text().strip()
    return None


def _out(msg, as_json: bool) -> None:
    d = MessageToDict(msg, preserving_proto_field_name=True) if hasattr(msg, "DESCRIPTOR") else msg
    if as_json:
        print(json.dumps(d, ensure_ascii=False, indent=2))
    else:
        for k, v in d.items():
            if k != "entries":
                print(f"{k}: {v}")
        for e in d.get("entries", []):
            print(
                f"  {e.get('id')}: {e.get('term')}  {e.get('translations', {})}  {e.get('aliases', [])}"
            )


def _progress(done: int, total: int) -> None:
    width = 30
    filled = int(width * done / max(1, total))
    print(
        f"\r  uploading [{'#' * filled}{'.' * (width - filled)}] {done}/{total} entries",
        end="",
        file=sys.stderr,
        flush=True,
    )
    if done >= total:
        print(file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="rasst glossary", description="Manage glossaries on a rasst server."
    )
    p.add_argument("--server", default=os.environ.get("RASST_SERVER", "127.0.0.1:50051"))
    p.add_argument("--token", default=None, help="admin bearer token (default: $RASST_ADMIN_TOKEN)")
    p.add_argument(
        "--token-file", default=None, help="file holding the token (e.g. var/rasst/admin_token)"
    )
    p.add_argument("--tls-ca", default=None)
    p.add_argument("--json", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    put = sub.add_parser("put", help="create or replace a glossary from a file")
    put.add_argument("glossary_id")
    put.add_argument("file", type=Path)
    put.add_argument("--format", choices=["jsonl", "csv", "tsv", "acl_json", "tbx"], default=None)
    patch = sub.add_parser("patch", help="upsert entries from a JSONL file and/or delete ids")
    patch.add_argument("glossary_id")
    patch.add_argument("--upsert", type=Path, default=None, help="JSONL of entries")
    patch.add_argument("--delete", nargs="*", default=[], help="entry ids to delete")
    patch.add_argument("--expected-version", type=int, default=0)
    get = sub.add_parser("get")
    get.add_argument("glossary_id")
    get.add_argument("--entries", action="store_true")
    sub.add_parser("list")
    delete = sub.add_parser("delete")
    delete.add_argument("glossary_id")
    reload = sub.add_parser(
        "reload", help="load a model checkpoint on the server and re-embed every glossary"
    )
    reload.add_argument("checkpoint_path")
    sub.add_parser("stats")
    args = p.parse_args(argv)
    try:
        client = Client(args.server, _token(args), args.tls_ca, timeout=600)
    except OSError as e:
        print(f"rasst glossary: {e}", file=sys.stderr)
        return 1
    try:
        if args.cmd == "put":
            fmt = args.format or format_for(args.file)
            if fmt is None:
                print(
                    f"rasst glossary: cannot tell the format of {args.file.name}; pass --format",
                    file=sys.stderr,
                )
                return 2
            content = args.file.read_bytes()
            _progress(0, 1)
            res = client.put_glossary(args.glossary_id, content=content, fmt=fmt)
            _progress(1, 1)
            _out(res, args.json)
        elif args.cmd == "patch":
            upserts = []
            if args.upsert:
                for i, line in enumerate(args.upsert.read_text().splitlines(), 1):
                    if line.strip():
                        try:
                            upserts.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            print(
                                f"rasst glossary: {args.upsert}:{i}: not valid JSON: {e.msg}",
                                file=sys.stderr,
                            )
                            return 1
            res = None
            expected = args.expected_version
            batches = [
                upserts[i : i + CHUNK_ENTRIES] for i in range(0, len(upserts), CHUNK_ENTRIES)
            ] or [[]]
            for bi, batch in enumerate(batches):
                res = client.patch_glossary(
                    args.glossary_id, batch, args.delete if bi == 0 else [], expected
                )
                expected = res.version if expected else 0
                if len(batches) > 1:
                    _progress(min(len(upserts), (bi + 1) * CHUNK_ENTRIES), len(upserts))
            _out(res, args.json)
        elif args.cmd == "get":
            _out(client.get_glossary(args.glossary_id, args.entries), args.json)
        elif args.cmd == "list":
            gl = client.list_glossaries()
            if args.json:
                print(
                    json.dumps(
                        [MessageToDict(g, preserving_proto_field_name=True) for g in gl], indent=2
                    )
                )
            else:
                for g in gl:
                    print(
                        f"{g.glossary_id:24} v{g.version:<5} {g.entry_count:>8} entries  {','.join(g.languages)}"
                    )
        elif args.cmd == "delete":
            client.delete_glossary(args.glossary_id)
            print(f"deleted {args.glossary_id}")
        elif args.cmd == "reload":
            _out(client.reload_model(args.checkpoint_path), args.json)
        elif args.cmd == "stats":
            _out(client.stats(), args.json)
    except RasstError as e:
        print(f"rasst glossary: {e}", file=sys.stderr)
        for f, d in e.field_violations:
            print(f"  {f}: {d}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"rasst glossary: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0
