"""Glossary file formats by file extension, shared by the server and the admin CLI.

Pure Python, no dependencies: the client may not import the server package.
"""

from __future__ import annotations

from pathlib import PurePath

EXTENSION_FORMATS = {
    "jsonl": "jsonl",
    "csv": "csv",
    "tsv": "tsv",
    "tbx": "tbx",
    "xml": "tbx",
    "json": "acl_json",
}


def format_for(path: str | PurePath) -> str | None:
    """The glossary format a file's extension names, or None when it names none."""
    return EXTENSION_FORMATS.get(PurePath(path).suffix.lower().lstrip("."))
