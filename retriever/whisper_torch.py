"""Whisper's encoder from a CTranslate2 model, as a PyTorch (``transformers``) module.

The default front-end runs Whisper tiny.en's encoder with CTranslate2, the fastest
choice on a CPU. CTranslate2's CUDA build needs cuBLAS 12, which a CUDA 13 machine
does not have; and CTranslate2 cannot run on other torch devices at all. This module
reads the encoder's weights out of CTranslate2's ``model.bin`` and loads them into
``transformers``' ``WhisperEncoder``, so the same frozen front-end runs wherever torch
runs. It also saves the port as an ordinary ``transformers`` model directory
(``save_pretrained``), which ``HFAudioFrontend`` loads with ``from_pretrained``.

``model.bin`` layout (CTranslate2's ``ModelSpec`` serialisation, binary version >= 5):
uint32 version, string spec name, uint32 spec revision, uint32 variable count, then per
variable: string name, uint8 rank, uint32 dims[rank], uint8 dtype, uint32 byte count,
bytes; then aliases. Strings are a uint16 length followed by NUL-terminated bytes.
"""

from __future__ import annotations

import logging
import re
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

# CTranslate2's DataType enum -> numpy dtype (bfloat16 is read as raw uint16 and widened).
_CT2_DTYPES = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),
}
_BFLOAT16 = 5


def read_ct2_variables(model_bin: str | Path, prefix: str = "encoder/") -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 ``model.bin`` whose names start with ``prefix``.

    int8-quantised weights come back dequantised (``weight / weight_scale``) as float32.
    """
    path = Path(model_bin)
    out: dict[str, np.ndarray] = {}
    with path.open("rb") as f:

        def read(fmt: str):
            size = struct.calcsize("<" + fmt)
            data = f.read(size)
            if len(data) != size:
                raise ValueError(f"{path}: truncated CTranslate2 model file")
            return struct.unpack("<" + fmt, data)

        def string() -> str:
            (n,) = read("H")
            return f.read(n)[:-1].decode()

        (version,) = read("I")
        if version < 5:
            raise ValueError(f"{path}: CTranslate2 model binary version {version} < 5 is not read")
        string()  # spec name
        read("I")  # spec revision
        (count,) = read("I")
        for _ in range(count):
            name = string()
            (rank,) = read("B")
            dims = read("I" * rank) if rank else ()
            (dtype_id,) = read("B")
            (nbytes,) = read("I")
            if not name.startswith(prefix):
                f.seek(nbytes, 1)
                continue
            if dtype_id not in _CT2_DTYPES:
                raise ValueError(f"{path}: variable {name} has unknown dtype id {dtype_id}")
            a = np.frombuffer(f.read(nbytes), dtype=_CT2_DTYPES[dtype_id]).reshape(dims)
            if dtype_id == _BFLOAT16:
                a = (a.astype(np.uint32) << 16).view(np.float32)
            out[name[len(prefix) :]] = a
    for name in [n for n in out if n.endswith("/weight_scale")]:
        base = name[: -len("_scale")]
        scale = out.pop(name).astype(np.float32)
        w = out[base].astype(np.float32)
        out[base] = w / (scale.reshape(-1, *[1] * (w.ndim - 1)) if scale.ndim else scale)
    return out


def whisper_encoder_from_ct2(model_dir: str | Path, dtype: torch.dtype = torch.float32):
    """transformers' ``WhisperEncoder`` with the weights of a CTranslate2 Whisper model."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    model_bin = Path(model_dir) / "model.bin"
    if not model_bin.is_file():
        raise FileNotFoundError(f"{model_dir} has no CTranslate2 model.bin")
    v = read_ct2_variables(model_bin)
    layers = sorted(
        {int(k.split("/")[0][len("layer_") :]) for k in v if re.match(r"layer_\d+/", k)}
    )
    if not layers or "conv1/weight" not in v:
        raise ValueError(f"{model_bin} holds no Whisper encoder")
    d_model, n_mels, _ = v["conv1/weight"].shape
    cfg = WhisperConfig(
        num_mel_bins=int(n_mels),
        d_model=int(d_model),
        encoder_layers=len(layers),
        encoder_attention_heads=int(v["num_heads"]),
        encoder_ffn_dim=int(v["layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(v["position_encodings/encodings"].shape[0]),
    )
    cfg.architectures = ["WhisperEncoder"]
    t = {k: torch.from_numpy(np.array(a, dtype=np.float32)) for k, a in v.items() if a.ndim}
    state = {
        "conv1.weight": t["conv1/weight"],
        "conv1.bias": t["conv1/bias"],
        "conv2.weight": t["conv2/weight"],
        "conv2.bias": t["conv2/bias"],
        "embed_positions.weight": t["position_encodings/encodings"],
        "layer_norm.weight": t["layer_norm/gamma"],
        "layer_norm.bias": t["layer_norm/beta"],
    }
    for i in layers:
        src, dst = f"layer_{i}/", f"layers.{i}."
        q, k, w = t[src + "self_attention/linear_0/weight"].chunk(3, dim=0)
        qb, _, vb = t[src + "self_attention/linear_0/bias"].chunk(3, dim=0)  # k has no bias
        state |= {
            dst + "self_attn.q_proj.weight": q,
            dst + "self_attn.q_proj.bias": qb,
            dst + "self_attn.k_proj.weight": k,
            dst + "self_attn.v_proj.weight": w,
            dst + "self_attn.v_proj.bias": vb,
            dst + "self_attn.out_proj.weight": t[src + "self_attention/linear_1/weight"],
            dst + "self_attn.out_proj.bias": t[src + "self_attention/linear_1/bias"],
            dst + "self_attn_layer_norm.weight": t[src + "self_attention/layer_norm/gamma"],
            dst + "self_attn_layer_norm.bias": t[src + "self_attention/layer_norm/beta"],
            dst + "fc1.weight": t[src + "ffn/linear_0/weight"],
            dst + "fc1.bias": t[src + "ffn/linear_0/bias"],
            dst + "fc2.weight": t[src + "ffn/linear_1/weight"],
            dst + "fc2.bias": t[src + "ffn/linear_1/bias"],
            dst + "final_layer_norm.weight": t[src + "ffn/layer_norm/gamma"],
            dst + "final_layer_norm.bias": t[src + "ffn/layer_norm/beta"],
        }
    encoder = WhisperEncoder(cfg)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{model_bin}: ported weights do not fit WhisperEncoder "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    return encoder.to(dtype).eval()


def export_whisper_encoder(
    model_dir: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float16
) -> Path:
    """Save the port as a transformers model directory (config.json + model.safetensors)."""
    out = Path(out_dir)
    whisper_encoder_from_ct2(model_dir, dtype).save_pretrained(out)
    logger.info("Whisper encoder from %s saved to %s (%s)", model_dir, out, dtype)
    return out


def encode_unpadded(encoder, mel: torch.Tensor) -> torch.Tensor:
    """Run a Whisper encoder on mel features of any even length up to 30 s.

    transformers' ``WhisperEncoder.forward`` insists on the full 30 s (3000 mel frames);
    CTranslate2 encodes the clip as it is, and the speech head was trained on frames
    computed that way. This is the same computation without the padding: the conv stem,
    the first positions, the layers, the final norm. mel: (B, n_mels, 2T) -> (B, T, D).
    """
    h = F.gelu(encoder.conv1(mel))
    h = F.gelu(encoder.conv2(h)).permute(0, 2, 1)
    h = h + encoder.embed_positions.weight[: h.shape[1]]
    for layer in encoder.layers:
        h = layer(h, None)
        if isinstance(h, tuple):  # older transformers return (hidden, attentions)
            h = h[0]
    return encoder.layer_norm(h)
