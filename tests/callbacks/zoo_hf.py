"""Hugging Face Transformers in the zoo: a GPT-2 language model and a BERT classifier, as a user wraps them.

Both are built from tiny configs (random weights, nothing downloaded), in float64 so that the dense oracle
of :mod:`tests.oracle` is exact to rounding, with ``attn_implementation="sdpa"`` by default (the fused
attention whose flash kernel has no double backward) or ``"eager"``. The modules are what a user writes:
dict batches straight into ``model(**batch)``, ``.loss`` out, AdamW. About 450 parameters each, so that a
dense float64 Hessian takes about a second.

Dropout: GPT-2 keeps its residual and embedding dropout (0.1: training draws random numbers, which the
monitors must not disturb) but no attention dropout, so that its sdpa and eager forms train identically (they
draw attention-dropout masks differently); BERT has none, so that the gradient noise scale, which is measured
in train mode, has an exact oracle on it.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

VOCAB = 16
SEQ = 6
Attention = Literal["sdpa", "eager"]


class HFModule(pl.LightningModule):
    """``self.model(**batch).loss`` of a Hugging Face model, logged as ``train_loss``, trained with AdamW."""

    model: nn.Module

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.model(**batch).loss
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


class TinyGPT2(HFModule):
    """``GPT2LMHeadModel``: 2 layers of width 4 (2 heads), vocabulary 16, tied embeddings; 440 parameters."""

    def __init__(self, attn_implementation: Attention = "sdpa") -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            vocab_size=VOCAB,
            n_positions=SEQ,
            n_embd=4,
            n_layer=2,
            n_head=2,
            n_inner=8,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
            attn_implementation=attn_implementation,
        )
        self.model = GPT2LMHeadModel(config).double()


class TinyBert(HFModule):
    """``BertForSequenceClassification``: 2 layers of width 4, 2 labels, no dropout: 474 parameters."""

    def __init__(self, attn_implementation: Attention = "sdpa") -> None:
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            vocab_size=VOCAB,
            hidden_size=4,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=8,
            max_position_embeddings=SEQ,
            type_vocab_size=1,
            num_labels=2,
            pad_token_id=0,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            attn_implementation=attn_implementation,
        )
        self.model = BertForSequenceClassification(config).double()


class TokenDataset(Dataset):
    """Random token sequences as dicts: ``{"input_ids", "labels"}`` (next-token labels = the inputs) for the
    language model; ``{"input_ids", "attention_mask", "labels"}`` (padded tails, a class per sequence) for
    the classifier."""

    def __init__(self, task: Literal["lm", "classify"], n: int = 16) -> None:
        gen = torch.Generator().manual_seed(0)
        self.input_ids = torch.randint(1, VOCAB, (n, SEQ), generator=gen)
        self.task = task
        if task == "classify":
            lengths = torch.randint(SEQ // 2, SEQ + 1, (n,), generator=gen)
            self.attention_mask = (torch.arange(SEQ) < lengths[:, None]).long()
            self.input_ids = self.input_ids * self.attention_mask  # pad token 0
            self.labels = torch.randint(0, 2, (n,), generator=gen)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if self.task == "lm":
            return {"input_ids": self.input_ids[i], "labels": self.input_ids[i]}
        return {
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention_mask[i],
            "labels": self.labels[i],
        }


def lm_loader() -> DataLoader:
    return DataLoader(TokenDataset("lm"), batch_size=4)


def classify_loader() -> DataLoader:
    return DataLoader(TokenDataset("classify"), batch_size=4)


def hf_loss(model: nn.Module, batch: Any) -> Tensor:
    """The oracle's loss: the wrapped model's own ``.loss`` (the module's training_step without logging)."""
    return model.model(**batch).loss  # type: ignore[operator]
