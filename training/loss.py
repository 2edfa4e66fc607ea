"""Contrastive loss for the speech<->term dual encoder.

Multi-positive InfoNCE (pytorch-metric-learning ``SupConLoss``: every positive of an
anchor shares one softmax over all candidates) in both directions:
audio windows as anchors against term vectors, and term vectors against audio.
Labels identify *pronunciations* (the phoneme string), so two spellings of one sound
are never pushed apart (false-negative masking), and several utterances of one term
in a batch are all positives. Negatives: every other term in the batch, mined
phonetic neighbours, text-only distractor terms, and a FIFO memory of term vectors
from earlier batches (cross-batch memory, detached as in MoCo / XBM).
"""

from __future__ import annotations

import torch
from pytorch_metric_learning.losses import SupConLoss
from torch import nn


class TermMemory:
    """FIFO of detached term vectors and their labels from earlier batches."""

    def __init__(self, size: int, dim: int):
        self.size = size
        self.emb = torch.zeros(0, dim)
        self.labels = torch.zeros(0, dtype=torch.long)

    def push(self, emb: torch.Tensor, labels: torch.Tensor) -> None:
        if self.size <= 0:
            return
        self.emb = torch.cat([emb.detach(), self.emb])[: self.size]
        self.labels = torch.cat([labels, self.labels])[: self.size]


class DualContrastiveLoss(nn.Module):
    """forward(audio (B, E), audio_labels (B,), text (M, E), text_labels (M,)) -> dict of losses.

    Audio windows with a negative label are background (no term spoken): they are only
    ever negatives, for the term anchors of the text->audio direction.
    """

    def __init__(
        self,
        temperature: float = 0.05,
        memory_size: int = 8192,
        dim: int = 256,
        text_weight: float = 0.5,
    ):
        super().__init__()
        # SupCon is matrix-based; pml's NTXentLoss materialises (positive pairs x negative
        # pairs), which is ~600M elements for 256 anchors against 9K candidates.
        self.infonce = SupConLoss(temperature=temperature)
        self.memory = TermMemory(memory_size, dim)
        self.text_weight = text_weight

    def forward(
        self,
        audio: torch.Tensor,
        audio_labels: torch.Tensor,
        text: torch.Tensor,
        text_labels: torch.Tensor,
    ) -> dict:
        mem_emb, mem_labels = self.memory.emb.to(text.device), self.memory.labels.to(text.device)
        # Memory vectors whose label is in the batch are stale copies of positives: drop them.
        keep = ~torch.isin(mem_labels, text_labels)
        ref = torch.cat([text, mem_emb[keep]])
        ref_labels = torch.cat([text_labels, mem_labels[keep]])
        term = audio_labels >= 0  # labels < 0 mark background windows: negatives only
        a2t = self.infonce(audio[term], audio_labels[term], ref_emb=ref, ref_labels=ref_labels)
        # Term anchors that have audio in the batch, against all audio windows.
        has_audio = torch.isin(text_labels, audio_labels)
        t2a = self.infonce(
            text[has_audio], text_labels[has_audio], ref_emb=audio, ref_labels=audio_labels
        )
        self.memory.push(text, text_labels)
        loss = a2t + self.text_weight * t2a
        return {"loss": loss, "a2t": a2t.detach(), "t2a": t2a.detach()}
