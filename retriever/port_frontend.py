"""``rasst port-frontend``: a checkpoint whose CTranslate2 Whisper front-end is ported to
PyTorch (``whisper_torch.py`` does the porting; this module copies the checkpoint around
it and holds the command line)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .model import CONFIG_NAME, DualEncoder, _package_model_dir, default_checkpoint_dir
from .whisper_torch import export_whisper_encoder


def port_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    dtype: torch.dtype,
    encoder: str | Path | None = None,
) -> Path:
    """Copy a checkpoint whose front-end is CTranslate2 Whisper, with that front-end ported.

    The copy holds the encoder in ``frontend/`` (a transformers model directory) and a
    config naming it by a path relative to the checkpoint, so the directory moves whole.
    The speech head and text encoder are the same weights. ``encoder``: an encoder
    already exported from the same model (an earlier port's ``frontend/``), copied
    instead of reading ``model.bin``: for machines without the model package.
    """
    import dataclasses
    import json
    import shutil

    src, out = Path(checkpoint), Path(out_dir)
    cfg = DualEncoder.load_config(src)
    if cfg.frontend.kind != "ctranslate2":
        raise ValueError(f"{src}: front-end is {cfg.frontend.kind!r}, not a CTranslate2 one")
    if out.resolve() == src.resolve():
        raise ValueError("--out must differ from --checkpoint")
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, out / f.name)
    if encoder is not None:
        if not (Path(encoder) / "config.json").is_file():
            raise ValueError(f"--encoder {encoder} is not an exported encoder (no config.json)")
        shutil.copytree(encoder, out / "frontend", dirs_exist_ok=True)
    else:
        model_dir = cfg.frontend.path or _package_model_dir(cfg.frontend.package)
        export_whisper_encoder(model_dir, out / "frontend", dtype)
    fe = dataclasses.replace(cfg.frontend, kind="transformers", path="frontend", package="")
    ported = dataclasses.replace(cfg, frontend=fe)
    (out / CONFIG_NAME).write_text(json.dumps(ported.to_dict(), indent=2, ensure_ascii=False))
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(
        prog="rasst port-frontend",
        description="Copy a checkpoint with its CTranslate2 Whisper front-end ported to "
        "PyTorch (transformers), to run it on GPUs CTranslate2 cannot use.",
    )
    p.add_argument("--checkpoint", default="default", help="checkpoint directory or 'default'")
    p.add_argument("--out", type=Path, required=True, help="directory of the ported checkpoint")
    p.add_argument(
        "--dtype",
        choices=["float16", "float32"],
        default="float16",
        help="stored weight type (CTranslate2 Whisper models are stored in float16: no loss)",
    )
    p.add_argument(
        "--encoder",
        type=Path,
        default=None,
        help="copy this already exported encoder (an earlier port's frontend/) instead of "
        "reading the CTranslate2 model",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ckpt = default_checkpoint_dir() if args.checkpoint == "default" else Path(args.checkpoint)
    try:
        out = port_checkpoint(ckpt, args.out, getattr(torch, args.dtype), args.encoder)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"rasst port-frontend: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0
