"""Text for language models: a vocabulary, the corpus as tokens on the device, windows as training samples.

* :class:`Vocab`: a character vocabulary (the distinct characters of the file, sorted by code point, as
  nanoGPT's ``shakespeare_char``) or a byte-level one (the 256 byte values). Saved with a run as
  ``vocab.json``; a resumed run and ``deba sample`` check they read the same mapping.
* :func:`load_text`: a UTF-8 file -> :class:`TextData` (train tokens = the first 90 %, validation = the last
  10 %), read in two streaming passes so that the data layer's peak memory stays near one token array
  (about the corpus size for a vocabulary of at most 256 symbols) plus a few MB of buffers.
* :class:`TextLoader`: the training samples. A sample is a window of ``block_size + 1`` consecutive tokens
  (input = the first ``block_size``, target = the last ``block_size``). An epoch is
  ``train_tokens // block_size`` samples, as many windows as the split holds disjoint blocks; sample k of
  epoch e starts at a uniform offset in [0, train_tokens - block_size - 1] hashed from (seed, e, k), the
  distribution nanoGPT's ``get_batch`` draws from, so order and offsets do not depend on batch size, rank
  count or resuming. Batches are cut from the epoch's samples exactly as :class:`DeviceLoader` cuts images.
* :func:`val_windows`: the validation split as disjoint windows in order (every validation token is a
  target exactly once, except the very first), for a loss over the whole split.

The tokens sit on the device in the smallest integer dtype that holds the vocabulary (uint8 up to 256
symbols, int16 up to 32767, else int32) and become int64 per batch.
"""
from __future__ import annotations

import codecs
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DebaError
from ..runfolder import VOCAB_FILE  # noqa: F401 (deba.data.text.VOCAB_FILE, as before)
from .sampling import BatchGeometry, check_batch_size, epoch_key, mix32

VOCAB_KINDS = ("char", "byte")
TRAIN_FRACTION = 0.9
MIN_WINDOWS = 10  # a corpus needs at least 10 x (block_size + 1) tokens
DEFAULT_SHAKESPEARE = "/work/shared/data/tinyshakespeare.txt"
_CHUNK = 1 << 22  # bytes per read: 4 MB


class Vocab:
    """Token ids <-> text. ``kind`` ``"char"`` (``chars``: the symbols, id = position) or ``"byte"``."""

    def __init__(self, kind: str, chars: list[str] | None = None):
        if kind not in VOCAB_KINDS:
            raise DebaError(f"vocab must be one of {', '.join(VOCAB_KINDS)}, got {kind!r}")
        if kind == "char":
            if not chars or len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
                raise DebaError("a character vocabulary needs a list of distinct single characters")
        self.kind = kind
        self.chars = list(chars) if kind == "char" else None
        self._index = {c: i for i, c in enumerate(self.chars)} if kind == "char" else None

    @property
    def size(self) -> int:
        return len(self.chars) if self.kind == "char" else 256

    def __len__(self) -> int:
        return self.size

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.kind == other.kind and self.chars == other.chars

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; a character outside the vocabulary is a DebaError naming it."""
        if self.kind == "byte":
            return list(text.encode("utf-8"))
        missing = sorted({c for c in text if c not in self._index})
        if missing:
            shown = ", ".join(repr(c) for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise DebaError(f"{len(missing)} character(s) not in the run's vocabulary: {shown}")
        return [self._index[c] for c in text]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.kind == "byte":
            return bytes(ids).decode("utf-8", errors="replace")
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "size": self.size, **({"chars": self.chars} if self.kind == "char" else {})}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        try:
            return cls(d["kind"], d.get("chars"))
        except (KeyError, TypeError):
            raise DebaError("vocabulary file: expected {'kind': 'char'|'byte', 'chars': [...]}") from None

    def save(self, path: str | Path) -> None:
        from ..logio import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        from ..logio import read_json

        return cls.from_dict(read_json(path))


def token_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer dtype holding ids 0..vocab_size-1."""
    if vocab_size <= 256:
        return torch.uint8
    if vocab_size <= 2 ** 15:
        return torch.int16
    return torch.int32


_NP = {torch.uint8: np.uint8, torch.int16: np.int16, torch.int32: np.int32}


def _decoded_chunks(path: Path) -> Iterator[tuple[bytes, str]]:
    """(raw bytes, decoded text) per chunk of the file; a NUL byte or invalid UTF-8 is a DebaError."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    done = 0
    with open(path, "rb") as f:
        while True:
            raw = f.read(_CHUNK)
            if b"\x00" in raw:
                raise DebaError(f"{path}: a binary file (NUL byte near byte {done + raw.index(0)}); "
                                "--data needs a UTF-8 text file")
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise DebaError(f"{path}: not UTF-8 text (invalid byte near byte {done + e.start}); "
                                "--data needs a UTF-8 text file") from None
            if not raw:
                return
            done += len(raw)
            yield raw, text


def read_tokens(path: str | Path, vocab_kind: str = "char") -> tuple[np.ndarray, Vocab]:
    """The whole file as token ids (smallest dtype) and its vocabulary, in two streaming passes."""
    path = Path(path)
    if vocab_kind not in VOCAB_KINDS:
        raise DebaError(f"vocab must be one of {', '.join(VOCAB_KINDS)}, got {vocab_kind!r}")
    if not path.is_file():
        raise DebaError(f"{path}: no such text file")
    if path.stat().st_size == 0:
        raise DebaError(f"{path}: the text file is empty")
    chars: set[str] = set()
    count = 0
    for raw, text in _decoded_chunks(path):  # pass 1: validity, vocabulary, length
        if vocab_kind == "char":
            chars.update(text)
            count += len(text)
        else:
            count += len(raw)
    vocab = Vocab("char", sorted(chars)) if vocab_kind == "char" else Vocab("byte")
    dtype = _NP[token_dtype(vocab.size)]
    tokens = np.empty(count, dtype=dtype)
    pos = 0
    if vocab_kind == "char":
        lut = np.zeros(max(ord(c) for c in vocab.chars) + 1, dtype=dtype)
        lut[[ord(c) for c in vocab.chars]] = np.arange(vocab.size, dtype=dtype)
    for raw, text in _decoded_chunks(path):  # pass 2: ids into the one array
        if vocab_kind == "char":
            ids = lut[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]
        else:
            ids = np.frombuffer(raw, dtype=np.uint8)
        tokens[pos:pos + len(ids)] = ids
        pos += len(ids)
    return tokens, vocab


@dataclass
class TextData:
    """A corpus split for language modelling; ``train`` and ``val`` are 1-D token tensors."""

    train: torch.Tensor
    val: torch.Tensor
    vocab: Vocab
    path: str
    name: str = "text"

    @property
    def num_classes(self) -> int:
        return self.vocab.size


def load_text(path: str | Path, block_size: int, vocab_kind: str = "char", name: str = "text") -> TextData:
    """Read ``path`` (UTF-8) and split it 90/10; refuses a corpus of fewer than 10 x (block + 1) tokens
    in one line (the validation split would be empty or tiny)."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise DebaError(f"block_size must be an integer >= 1, got {block_size!r}")
    tokens, vocab = read_tokens(path, vocab_kind)
    need = MIN_WINDOWS * (block_size + 1)
    if len(tokens) < need:
        raise DebaError(f"{path}: {len(tokens)} tokens, fewer than 10 x (block size {block_size} + 1) = {need}; "
                        "use a longer text or a smaller --block-size")
    cut = int(len(tokens) * TRAIN_FRACTION)
    t = torch.from_numpy(tokens)  # shares the array's memory; the splits are views
    train, val = t[:cut], t[cut:]
    for part, what in ((train, "training"), (val, "validation")):
        if part.numel() < block_size + 1:
            raise DebaError(f"{path}: the {what} split has {part.numel()} tokens, fewer than block size + 1 "
                            f"({block_size + 1}); use a longer text or a smaller --block-size")
    return TextData(train, val, vocab, str(path), name)


def window_offsets(n: int, seed: int, epoch: int, span: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Start offsets in [0, span) of samples 0..n-1 of ``epoch``: a 62-bit hash of (seed, epoch, k), mod span."""
    key = epoch_key(seed, epoch) ^ 0x2545F4914F6CDD1D  # a stream of its own
    k1, k2 = key & 0xFFFFFFFF, (key >> 32) & 0xFFFFFFFF
    ids = torch.arange(n, dtype=torch.int64, device=device)
    hi = mix32(mix32(ids ^ k1) ^ k2)
    lo = mix32(mix32(ids ^ k2) ^ k1 ^ 0x9E3779B9)
    return (((hi & 0x3FFFFFFF) << 32) | lo) % span


class TextLoader(BatchGeometry):
    """Batches ``(x int64 [b, T], y int64 [b, T])`` of windows of the training tokens (see the module
    docstring); ``batch_size`` is the global batch in sequences, split over ranks as DeviceLoader does."""

    def __init__(self, tokens: torch.Tensor, block_size: int, batch_size: int, device: torch.device | str = "cpu",
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        self.device = torch.device(device) if not isinstance(device, torch.device) else device
        self.tokens = tokens.to(self.device)
        self.block_size = int(block_size)
        self.span = int(self.tokens.numel()) - self.block_size  # offsets 0..span-1 leave room for the target
        if self.span < 1:
            raise DebaError(f"the training split has {self.tokens.numel()} tokens, fewer than block size + 1")
        self.n = max(1, int(self.tokens.numel()) // self.block_size)
        if world_size < 1 or not 0 <= rank < world_size:
            raise DebaError(f"rank {rank} is not in [0, world_size={world_size})")
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self._epoch = 0
        self._cache_epoch: int | None = None
        self._offsets: torch.Tensor | None = None
        self._arange = torch.arange(self.block_size + 1, device=self.device)
        self._batch_size = check_batch_size(batch_size, self.n, self.world_size)

    @property
    def tokens_per_sample(self) -> int:
        return self.block_size

    def set_batch_size(self, batch_size: int) -> None:
        self._batch_size = check_batch_size(batch_size, self.n, self.world_size)

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != epoch or epoch < 0:
            raise DebaError(f"epoch must be a non-negative integer, got {epoch!r}")
        self._epoch = int(epoch)

    def offsets(self, epoch: int | None = None) -> torch.Tensor:
        """Start offsets of the epoch's samples, in sample order."""
        e = self._epoch if epoch is None else int(epoch)
        if e != self._cache_epoch:
            self._offsets = window_offsets(self.n, self.seed, e, self.span, self.device)
            self._cache_epoch = e
        return self._offsets

    def batches(self, start_sample: int = 0, drop_last: bool = True):
        if int(start_sample) != start_sample or not 0 <= start_sample <= self.n:
            raise DebaError(f"start_sample must be in [0, {self.n}], got {start_sample!r}")
        offsets = self.offsets()
        return self._generate(offsets, int(start_sample), self.global_batch_size, self.per_rank_batch_size)

    def _generate(self, offsets, start, global_b, per_rank):
        pos = start
        while pos + global_b <= self.n:
            a = pos + self.rank * per_rank
            yield windows(self.tokens, offsets[a:a + per_rank], self._arange)
            pos += global_b

    def __iter__(self):
        return self.batches(0)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self._epoch, "batch_size": self._batch_size}


def windows(tokens: torch.Tensor, starts: torch.Tensor, arange: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of the windows starting at ``starts``: tokens[s:s+T] and tokens[s+1:s+T+1]."""
    w = tokens[starts.unsqueeze(1) + arange].long()
    return w[:, :-1], w[:, 1:]


def val_windows(tokens: torch.Tensor, block_size: int, batch_size: int = 256):
    """The validation split as disjoint windows in order, ``batch_size`` windows per batch; the last window
    may be shorter (every target position 1..len-1 is scored once)."""
    n = int(tokens.numel())
    starts = list(range(0, n - 1, block_size))
    full = [s for s in starts if s + block_size + 1 <= n]
    arange = torch.arange(block_size + 1, device=tokens.device)
    for i in range(0, len(full), batch_size):
        s = torch.tensor(full[i:i + batch_size], device=tokens.device)
        yield windows(tokens, s, arange)
    if len(full) < len(starts):  # the tail, shorter than a block
        s = starts[len(full)]
        w = tokens[s:].long().unsqueeze(0)
        yield w[:, :-1], w[:, 1:]


def shakespeare_path(data: str | None) -> str:
    return data or DEFAULT_SHAKESPEARE


def bits_per_token(loss_nats: float | None) -> float | None:
    return None if loss_nats is None else loss_nats / math.log(2)


def check_vocab_file(path: Path, vocab: Vocab) -> None:
    """Refuse, in one line, a run folder whose vocab.json differs from ``vocab``."""
    if not path.exists():
        return
    try:
        saved = Vocab.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, DebaError):
        raise DebaError(f"{path}: not a vocabulary file") from None
    if saved != vocab:
        raise DebaError(f"{path}: vocabulary mismatch: the run was trained on a {saved.kind} vocabulary of "
                        f"{saved.size} symbols, this text gives a {vocab.kind} vocabulary of {vocab.size}; "
                        "use the same text and --vocab, or another --out")
