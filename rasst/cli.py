"""The ``rasst`` command, the product's entry point. Subcommands import their modules lazily, so ``rasst translate``
and ``rasst glossary`` never import torch or faiss.

Exit codes: 0 ok, 1 failure, 2 usage.
"""

from __future__ import annotations

import importlib
import sys

# verb -> (module, function, help, needs)
COMMANDS = {
    "serve": ("rasst.retriever.server", "main", "run the retrieval server", "server"),
    "translate": (
        "rasst.client.translate",
        "main",
        "reference translator: stream a WAV, print hints and prompts",
        None,
    ),
    "glossary": (
        "rasst.client.admin",
        "main",
        "put / patch / get / list / delete glossaries",
        None,
    ),
    "data": (
        "rasst.training.cli",
        "data_main",
        "build or import speech-term corpora",
        "server,train",
    ),
    "train": ("rasst.training.cli", "train_main", "train the dual encoder", "server,train"),
    "eval": (
        "rasst.training.cli",
        "eval_main",
        "offline Recall@k by glossary size, or --streaming hint quality",
        "server,train",
    ),
    "port-frontend": (
        "rasst.retriever.port_frontend",
        "main",
        "copy a checkpoint with its CTranslate2 front-end ported to PyTorch (for GPUs)",
        "server",
    ),
    "bench": (
        "rasst.training.bench.cli",
        "main",
        "latency, load, index scaling and ASR baselines",
        "server,train,bench",
    ),
}


def usage() -> str:
    lines = [
        "usage: rasst <command> [options]   (rasst <command> --help for more)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<10} {spec[2]}" for name, spec in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb not in COMMANDS:
        print(f"rasst: unknown command {verb!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _, needs = COMMANDS[verb]
    try:
        fn = getattr(importlib.import_module(module), func)
    except ImportError as e:
        extra = f" (pip install 'rasst[{needs},cpu]')" if needs else ""
        print(f"rasst {verb}: missing dependency {e.name or e}{extra}", file=sys.stderr)
        return 1
    try:
        return int(fn(rest) or 0)
    except SystemExit as e:  # argparse: 2 on usage errors, 0 on --help
        return int(e.code) if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        return 1


if __name__ == "__main__":
    sys.exit(main())
