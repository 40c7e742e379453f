"""Language modelling in the trainer: text data, the GPT, AdamW, and a validation loss instead of accuracy.

The trainer calls this module at a few hooks (``LMTask.for_config`` is None for image data, and then
nothing here runs). A training sample is a window of ``block_size`` tokens (deba.data.text); the batch
size counts sequences, tokens per step = sequences x block size. Evaluation is the mean cross-entropy
over every target token of the whole validation split (disjoint windows, in order), in nats, with bits
per character (bits per token: per byte for the byte vocabulary) = loss / ln 2. Lower is better: the
summary's metric is ``final_val_loss`` (``metric`` and ``metric_higher_is_better`` say so).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..errors import DebaError

TEXT_DATASETS = ("text", "shakespeare-char")
LM_ARCHS = ("gpt",)
METRIC = "final_val_loss"


def is_text_dataset(name: str | None) -> bool:
    return name in TEXT_DATASETS


def validate_lm_options(c: Any) -> None:
    """The language-model options of a TrainConfig, one line per problem."""
    from ..data.text import VOCAB_KINDS
    from .optim import OPTIMIZERS

    for name in ("block_size", "n_layer", "n_head", "n_embd"):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise DebaError(f"{name} must be an integer >= 1, got {v!r}")
    if c.n_embd % c.n_head:
        raise DebaError(f"n_embd ({c.n_embd}) must be a multiple of n_head ({c.n_head})")
    if c.vocab not in VOCAB_KINDS:
        raise DebaError(f"vocab must be one of {', '.join(VOCAB_KINDS)}, got {c.vocab!r}")
    if c.optimizer not in OPTIMIZERS:
        raise DebaError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {c.optimizer!r}")
    if not 0 <= c.dropout < 1:
        raise DebaError(f"dropout must be in [0, 1), got {c.dropout!r}")
    for name in ("beta1", "beta2"):
        v = getattr(c, name)
        if not 0 <= v < 1:
            raise DebaError(f"{name} must be in [0, 1), got {v!r}")
    if c.grad_clip is not None and not (math.isfinite(c.grad_clip) and c.grad_clip > 0):
        raise DebaError(f"grad_clip must be a number > 0, got {c.grad_clip!r}")
    if c.warmup_samples < 0:
        raise DebaError(f"warmup_samples must be an integer >= 0, got {c.warmup_samples!r}")
    if c.min_lr < 0 or c.min_lr > c.lr:
        raise DebaError(f"min_lr must be in [0, lr={c.lr}], got {c.min_lr!r}")
    if c.max_samples is not None and (isinstance(c.max_samples, bool) or c.max_samples < 1):
        raise DebaError(f"max_samples must be an integer >= 1, got {c.max_samples!r}")
    if c.arch == "gpt" and not c.model and not is_text_dataset(c.dataset):
        raise DebaError(f"arch gpt trains on text: use --dataset text --data FILE.txt or --dataset "
                        f"shakespeare-char, not {c.dataset!r}")


def optimizer_kind(c: Any) -> str:
    if c.optimizer != "auto":
        return c.optimizer
    return "adamw" if (c.arch == "gpt" and not c.model) else "sgd"


def step_options(c: Any) -> dict:
    """Extra keyword arguments of make_step; {} for the paper's SGD step without clipping."""
    kind = optimizer_kind(c)
    if kind == "sgd" and c.grad_clip is None and not is_text_dataset(c.dataset):
        return {}
    out: dict[str, Any] = {"optimizer": kind, "grad_clip": c.grad_clip}
    if kind == "adamw":
        out["betas"] = (c.beta1, c.beta2)
    if is_text_dataset(c.dataset):
        from ..gpt import lm_loss

        out["loss_fn"] = lm_loss
    return out


class LMTask:
    """What a language-model run adds to the trainer (data, model, evaluation, records, summary)."""

    def __init__(self, config: Any):
        self.config = config
        self.text = None
        self.best_val_loss: float | None = None
        self.best_epoch: int | None = None

    @classmethod
    def for_config(cls, config: Any) -> "LMTask | None":
        return cls(config) if is_text_dataset(config.dataset) else None

    # --- setup -------------------------------------------------------------------------------------
    def setup_data(self, trainer: Any) -> tuple[int, int]:
        """Read the corpus, check the run folder's vocabulary, build the loaders; (windows per epoch, vocab)."""
        from ..data.text import VOCAB_FILE, TextLoader, check_vocab_file, load_text, shakespeare_path

        c = self.config
        if c.dataset == "text" and not c.data:
            raise DebaError("--dataset text needs --data FILE.txt (a UTF-8 text file)")
        path = shakespeare_path(c.data) if c.dataset == "shakespeare-char" else c.data
        self.text = load_text(path, c.block_size, c.vocab, name=c.dataset)
        out = Path(c.out) if c.out else None
        if out is not None:
            check_vocab_file(out / VOCAB_FILE, self.text.vocab)  # before anything is written
        trainer.data = None
        trainer.dataset_name = c.dataset
        trainer.loader = TextLoader(self.text.train, c.block_size, c.start_batch, trainer.device, seed=c.seed,
                                    rank=trainer.dist.rank, world_size=trainer.dist.world_size)
        self.val = self.text.val.to(trainer.device)
        trainer.test_loader = self.val
        return trainer.loader.num_samples, self.text.vocab.size

    def write_vocab(self, out: Path) -> None:
        from ..data.text import VOCAB_FILE

        if not (out / VOCAB_FILE).exists():
            self.text.vocab.save(out / VOCAB_FILE)

    def build_model(self, vocab_size: int) -> torch.nn.Module:
        from ..gpt import build_gpt

        c = self.config
        if c.arch != "gpt":
            raise DebaError(f"dataset {c.dataset} trains a language model: use --arch gpt (or --model "
                            f"package.module:function for your own), not {c.arch!r}")
        return build_gpt(vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd, c.dropout)

    # --- evaluation --------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, amp: str = "none") -> float:
        """Mean cross-entropy (nats) over every target token of the validation split; one host read."""
        import torch.nn.functional as F

        from ..data.text import val_windows

        was = model.training
        model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.val.device)
        n = 0
        ctx = torch.autocast(self.val.device.type, dtype=torch.bfloat16) if amp == "bf16" else _null()
        for x, y in val_windows(self.val, self.config.block_size):
            with ctx:
                logits = model(x)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),
                                     reduction="sum").double()
            n += y.numel()
        model.train(was)
        return float(total) / max(1, n)

    def annotate(self, rec: dict, epoch: int) -> None:
        """Add the language-model fields to an epoch record (test_loss holds the validation loss)."""
        loss = rec.get("test_loss")
        rec["val_loss"] = loss
        rec["val_bpc"] = None if loss is None else loss / math.log(2)
        rec["tokens"] = rec["samples"] * self.config.block_size
        if loss is not None and (self.best_val_loss is None or loss < self.best_val_loss):
            self.best_val_loss, self.best_epoch = loss, epoch

    def summary_fields(self, records: list, final_done: bool, samples_seen: int) -> dict:
        best = [(r["val_loss"], r["epoch"]) for r in records if r.get("val_loss") is not None]
        best_loss, best_epoch = min(best) if best else (None, None)
        final = records[-1].get("val_loss") if records and final_done else None
        return {
            "task": "language-model",
            "metric": METRIC,
            "metric_higher_is_better": False,
            "final_val_loss": final,
            "final_val_bpc": None if final is None else final / math.log(2),
            "best_val_loss": best_loss,
            "best_val_epoch": best_epoch,
            "block_size": self.config.block_size,
            "tokens_seen": samples_seen * self.config.block_size,
            "vocab_size": self.text.vocab.size if self.text else None,
            "vocab": self.config.vocab,
            "train_tokens": int(self.text.train.numel()) if self.text else None,
            "val_tokens": int(self.text.val.numel()) if self.text else None,
        }


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
