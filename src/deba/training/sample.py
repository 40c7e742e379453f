"""Text from a trained language-model run: the checkpoint's model, the run's vocabulary, a prompt."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DebaError
from ..runfolder import SAMPLE_FILE  # noqa: F401 (deba.training.sample.SAMPLE_FILE, as before)
from .checkpoint import CHECKPOINT_NAME, load_checkpoint


def load_run_model(run: str | Path, device: str = "cpu"):
    """(model, vocab, config) of a language-model run folder; a mismatch or a missing file is one line."""
    from ..data.text import VOCAB_FILE, Vocab
    from .config import TrainConfig
    from .lm import LMTask, is_text_dataset

    run = Path(run)
    if not run.is_dir():
        raise DebaError(f"{run}: no such run folder")
    vocab_path = run / VOCAB_FILE
    if not vocab_path.is_file():
        raise DebaError(f"{run}: no {VOCAB_FILE} (not a language-model run, or not started)")
    vocab = Vocab.load(vocab_path)
    payload = load_checkpoint(run / CHECKPOINT_NAME, map_location=device)
    saved = {k: v for k, v in payload["config"].items() if k in TrainConfig.__dataclass_fields__}
    config = TrainConfig.from_dict(saved, source=str(run / CHECKPOINT_NAME))
    if not is_text_dataset(config.dataset):
        raise DebaError(f"{run}: a run on {config.dataset!r}, not a language model")
    if config.model:
        raise DebaError(f"{run}: trained a user's model ({config.model}); sample it through the Python API")
    state = payload["model"]
    rows = state.get("wte.weight")
    if rows is None or rows.shape[0] != vocab.size:
        got = "no token embedding" if rows is None else f"{rows.shape[0]} token embeddings"
        raise DebaError(f"{vocab_path}: vocabulary mismatch: {vocab.size} symbols, the checkpoint's model has {got}")
    model = LMTask(config).build_model(vocab.size).to(device)
    model.load_state_dict(state)
    return model, vocab, config


def sample_text(model, vocab, prompt: str, tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
                seed: int = 1337, device: str = "cpu") -> str:
    """The prompt followed by ``tokens`` generated tokens."""
    from ..gpt import generate

    if not prompt:
        raise DebaError("the prompt is empty: give at least one character")
    ids = vocab.encode(prompt)
    g = torch.Generator().manual_seed(seed)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out = generate(model, idx, tokens, temperature=temperature, top_k=top_k, generator=g)
    return vocab.decode(out[0].tolist())
