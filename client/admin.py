"""``rasst glossary put|patch|get|list|delete`` and ``rasst glossary reload|stats``: the operator CLI.

The admin token comes from ``--token`` or ``RASST_ADMIN_TOKEN`` (or the file the server
wrote, via ``--token-file``). The connection options may stand before or after the
subcommand. Human output by default; ``--json`` for machines. Exit codes: 0 ok,
1 failure (one line on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from google.protobuf.json_format import MessageToDict

from rasst.formats import format_for

from .api import Client, RasstError

CHUNK_ENTRIES = 5000  # patch batch size for large uploads (progress shown per batch)
PROG = "rasst glossary"


class _Progress:
    """A progress bar on stderr (when it is a terminal) that is cleared before anything
    else is printed, so an error never lands glued onto it."""

    def __init__(self, what: str):
        self.what, self.shown = what, False
        self.tty = sys.stderr.isatty()

    def update(self, done: int, total: int) -> None:
        if not self.tty:
            return
        width = 30
        filled = int(width * done / max(1, total))
        bar = f"{'#' * filled}{'.' * (width - filled)}"
        print(f"\r  {self.what} [{bar}] {done}/{total}", end="", file=sys.stderr, flush=True)
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
            self.shown = False


def _token(args) -> str | None:
    if args.token:
        return args.token
    if os.environ.get("RASST_ADMIN_TOKEN"):
        return os.environ["RASST_ADMIN_TOKEN"]
    if args.token_file:
        return Path(args.token_file).read_text().strip()
    return None


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _as_dict(msg) -> dict:
    return MessageToDict(msg, preserving_proto_field_name=True)


def _print_glossary(g, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_as_dict(g), ensure_ascii=False, indent=2))
        return
    print(f"glossary   {g.glossary_id}")
    print(f"version    {g.version}")
    print(f"entries    {g.entry_count}")
    print(f"languages  {', '.join(g.languages) or '-'}")
    print(f"updated    {_when(g.update_time)}")


def _print_entries(entries, as_json: bool) -> None:
    if as_json:
        for e in entries:
            print(json.dumps(_as_dict(e), ensure_ascii=False))
        return
    for e in entries:
        tr = "  ".join(f"{k}={v}" for k, v in sorted(e.translations.items())) or "-"
        aliases = f"  (also: {' | '.join(e.aliases)})" if e.aliases else ""
        print(f"{e.id:<24} {e.term:<32} {tr}{aliases}")


def _print_stats(st, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_as_dict(st), ensure_ascii=False, indent=2))
        return
    rows = [
        ("model", st.model_id or "-"),
        ("uptime", f"{st.uptime_s:.0f} s"),
        ("active sessions", st.active_sessions),
        ("requests", st.requests_total),
        ("dropped", st.dropped_total),
        ("queue depth", st.queue_depth),
        (
            "encoder",
            f"{st.encoder_device}, {st.encoder_workers} worker(s) x "
            f"{st.encoder_threads} thread(s), {st.precision}",
        ),
        ("index", st.index_device),
    ]
    for k, v in rows:
        print(f"{k:<16} {v}")
    if st.glossaries:
        print()
        _print_list(st.glossaries, False)


def _print_list(glossaries, as_json: bool) -> None:
    if as_json:
        print(json.dumps([_as_dict(g) for g in glossaries], ensure_ascii=False, indent=2))
        return
    print(f"{'GLOSSARY':<24} {'VERSION':>7} {'ENTRIES':>8}  {'LANGUAGES':<12} UPDATED")
    for g in glossaries:
        print(
            f"{g.glossary_id:<24} {g.version:>7} {g.entry_count:>8}  "
            f"{','.join(g.languages):<12} {_when(g.update_time)}"
        )


def _parser() -> argparse.ArgumentParser:
    # The connection options are accepted before and after the subcommand: the
    # subcommands' copies default to SUPPRESS so they never overwrite the main ones.
    def connection(p: argparse.ArgumentParser, top: bool) -> None:
        d = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
        p.add_argument(
            "--server",
            default=d(os.environ.get("RASST_SERVER", "127.0.0.1:50051")),
            help="host:port (default $RASST_SERVER or 127.0.0.1:50051)",
        )
        p.add_argument(
            "--token", default=d(None), help="admin bearer token (default: $RASST_ADMIN_TOKEN)"
        )
        p.add_argument(
            "--token-file",
            default=d(None),
            help="file holding the token (e.g. var/rasst/admin_token)",
        )
        p.add_argument("--tls-ca", default=d(None), help="CA certificate (PEM) for TLS")
        p.add_argument(
            "--json", action="store_true", default=d(False), help="machine-readable output"
        )

    p = argparse.ArgumentParser(prog=PROG, description="Manage glossaries on a rasst server.")
    connection(p, True)
    sub = p.add_subparsers(dest="cmd", required=True)

    def command(name: str, **kw) -> argparse.ArgumentParser:
        c = sub.add_parser(name, **kw)
        connection(c, False)
        return c

    put = command("put", help="create or replace a glossary from a file")
    put.add_argument("glossary_id")
    put.add_argument("file", type=Path)
    put.add_argument("--format", choices=["jsonl", "csv", "tsv", "acl_json", "tbx"], default=None)
    patch = command("patch", help="upsert entries from a JSONL file and/or delete ids")
    patch.add_argument("glossary_id")
    patch.add_argument("--upsert", type=Path, default=None, help="JSONL of entries")
    patch.add_argument("--delete", nargs="+", default=[], help="entry ids to delete")
    patch.add_argument("--expected-version", type=int, default=0)
    get = command("get", help="a glossary's metadata, or its entries with --entries")
    get.add_argument("glossary_id")
    get.add_argument("--entries", action="store_true")
    get.add_argument("--page-size", type=int, default=0, help="entries per request (0 = server's)")
    command("list", help="every glossary")
    delete = command("delete", help="delete a glossary")
    delete.add_argument("glossary_id")
    reload = command(
        "reload", help="load a model checkpoint on the server and re-embed every glossary"
    )
    reload.add_argument("checkpoint_path")
    command("stats", help="the server's model, load and glossaries")
    return p


def _read_upserts(path: Path) -> list[dict]:
    upserts = []
    for i, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if line.strip():
            try:
                upserts.append(json.loads(line))
            except ValueError as e:
                raise ValueError(f"{path}:{i}: not valid JSON: {str(e)[:100]}") from None
    return upserts


def _run(args, client: Client, progress: _Progress) -> None:
    if args.cmd == "put":
        fmt = args.format or format_for(args.file)
        if fmt is None:
            raise _Usage(f"cannot tell the format of {args.file.name}; pass --format")
        content = args.file.read_bytes()
        progress.update(0, 1)
        res = client.put_glossary(args.glossary_id, content=content, fmt=fmt)
        progress.clear()
        _warn(res)
        _print_glossary(res, args.json)
    elif args.cmd == "patch":
        upserts = _read_upserts(args.upsert) if args.upsert else []
        res, expected = None, args.expected_version
        batches = [
            upserts[i : i + CHUNK_ENTRIES] for i in range(0, len(upserts), CHUNK_ENTRIES)
        ] or [[]]
        for bi, batch in enumerate(batches):
            res = client.patch_glossary(
                args.glossary_id, batch, args.delete if bi == 0 else [], expected
            )
            expected = res.version if expected else 0
            if len(batches) > 1:
                progress.update(min(len(upserts), (bi + 1) * CHUNK_ENTRIES), len(upserts))
        progress.clear()
        _warn(res)
        _print_glossary(res, args.json)
    elif args.cmd == "get":
        if args.entries:
            _print_entries(client.iter_entries(args.glossary_id, args.page_size), args.json)
        else:
            _print_glossary(client.get_glossary(args.glossary_id), args.json)
    elif args.cmd == "list":
        _print_list(client.list_glossaries(), args.json)
    elif args.cmd == "delete":
        client.delete_glossary(args.glossary_id)
        if args.json:
            print(json.dumps({"deleted": args.glossary_id}))
        else:
            print(f"deleted {args.glossary_id}")
    elif args.cmd == "reload":
        r = client.reload_model(args.checkpoint_path)
        if args.json:
            print(json.dumps(_as_dict(r), indent=2))
        else:
            print(
                f"model {r.model_id} serving; {r.glossaries_reembedded} glossaries embedded "
                f"in {r.took_ms / 1e3:.1f} s"
            )
    elif args.cmd == "stats":
        _print_stats(client.stats(), args.json)


class _Usage(Exception):
    pass


def _warn(res) -> None:
    for w in getattr(res, "warnings", ()):
        print(f"{PROG}: warning: {w}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cmd == "patch" and not args.upsert and not args.delete:
        parser.error("patch needs --upsert FILE and/or --delete ID ...; it would change nothing")
    progress = _Progress("uploading")
    try:
        client = Client(args.server, _token(args), args.tls_ca, timeout=600)
    except OSError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    try:
        _run(args, client, progress)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as other Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except _Usage as e:
        progress.clear()
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except RasstError as e:
        progress.clear()
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        progress.clear()
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0
