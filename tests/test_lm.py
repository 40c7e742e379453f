"""Language models (issue 13): text data, the GPT, AdamW and clipping, the warm-up/cosine schedule, the trainer
on text (summary, resume, policies, accumulation), `deba sample`, and bad input. Tiny GPTs, tiny corpora."""
from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from deba.cli import main
from deba.data.text import TextLoader, Vocab, load_text, read_tokens, token_dtype, val_windows, window_offsets
from deba.errors import DebaError
from deba.gpt import build_gpt, lm_loss
from deba.training.config import TrainConfig
from deba.training.optim import adamw_update, decay_groups
from deba.training.schedule import learning_rate
from deba.training.step import GraphStep, make_step
from deba.training.trainer import train

torch.set_num_threads(1)

CORPUS = "".join(f"line {i}: the quick brown fox jumps over the lazy dog; {i * 7 % 13}!\n" for i in range(40))
TINY = ["--arch", "gpt", "--block-size", "8", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
        "--start-batch", "8", "--lr", "3e-3", "--device", "cpu", "--quiet"]


@pytest.fixture
def corpus(tmp_path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(CORPUS, encoding="utf-8")
    return p


def _cfg(corpus, out, **kw) -> TrainConfig:
    base = dict(arch="gpt", dataset="text", data=str(corpus), block_size=8, n_layer=1, n_head=2, n_embd=16,
                start_batch=8, lr=3e-3, epochs=2, policy="fixed", device="cpu", quiet=True, out=str(out),
                deterministic=True)
    base.update(kw)
    return TrainConfig(**base)


# --- data -----------------------------------------------------------------------------------------------------
def test_char_vocab_is_the_sorted_characters_and_round_trips(corpus, tmp_path):
    tokens, vocab = read_tokens(corpus, "char")
    assert vocab.chars == sorted(set(CORPUS))
    assert tokens.dtype.name == "uint8" and len(tokens) == len(CORPUS)
    assert vocab.decode(tokens.tolist()) == CORPUS
    assert tokens[:4].tolist() == [vocab.chars.index(c) for c in "line"]
    vocab.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json") == vocab


def test_byte_vocab_reads_utf8_bytes(tmp_path):
    p = tmp_path / "u.txt"
    text = "héllo wörld ✓ " * 20
    p.write_text(text, encoding="utf-8")
    tokens, vocab = read_tokens(p, "byte")
    assert vocab.size == 256 and bytes(tokens.tolist()) == text.encode("utf-8")
    chars, cv = read_tokens(p, "char")
    assert cv.decode(chars.tolist()) == text and len(chars) == len(text)


def test_token_dtype_is_the_smallest_that_holds_the_vocabulary():
    assert token_dtype(65) == torch.uint8 and token_dtype(256) == torch.uint8
    assert token_dtype(257) == torch.int16 and token_dtype(32768) == torch.int16
    assert token_dtype(40000) == torch.int32


def test_split_is_the_first_90_percent_and_the_last_10(corpus):
    data = load_text(corpus, 8)
    cut = int(len(CORPUS) * 0.9)
    assert data.vocab.decode(data.train.tolist()) == CORPUS[:cut]
    assert data.vocab.decode(data.val.tolist()) == CORPUS[cut:]


@pytest.mark.parametrize("content, words", [
    (b"", "empty"),
    (b"abc\x00def" * 100, "binary"),
    (b"abc\xff\xfe" * 100, "not UTF-8"),
    (b"short text", "fewer than 10 x"),
])
def test_bad_text_is_one_line(tmp_path, content, words):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(DebaError, match=words):
        load_text(p, 8)


def test_windows_by_hand_and_independent_of_batch_size_and_resume_point(corpus):
    data = load_text(corpus, 8)
    t = data.train
    loader = TextLoader(t, 8, 4, seed=3)
    assert loader.num_samples == t.numel() // 8
    loader.set_epoch(2)
    off = window_offsets(loader.n, 3, 2, t.numel() - 8)
    assert int(off.min()) >= 0 and int(off.max()) <= t.numel() - 9
    xs, ys = zip(*loader.batches())
    x, y = torch.cat(xs), torch.cat(ys)
    for k in (0, 5, len(x) - 1):
        o = int(off[k])
        assert x[k].tolist() == t[o:o + 8].tolist() and y[k].tolist() == t[o + 1:o + 9].tolist()
    loader.set_batch_size(6)  # another batch size, from sample 12 on: the same windows
    x6 = torch.cat([b[0] for b in loader.batches(start_sample=12)])
    assert torch.equal(x6, x[12:12 + len(x6)])
    other = TextLoader(t, 8, 4, seed=3)
    other.set_epoch(3)
    assert not torch.equal(other.offsets(), off)  # a new epoch draws new offsets


def test_ranks_share_out_the_single_process_batch(corpus):
    t = load_text(corpus, 8).train
    single = TextLoader(t, 8, 4, seed=1)
    ranks = [TextLoader(t, 8, 4, seed=1, rank=r, world_size=2) for r in range(2)]
    for a, b0, b1 in zip(single.batches(), ranks[0].batches(), ranks[1].batches()):
        assert torch.equal(a[0], torch.cat([b0[0], b1[0]]))


def test_validation_windows_score_every_target_once():
    tokens = torch.arange(30, dtype=torch.uint8)
    ys = [y for _, y in val_windows(tokens, 8, batch_size=2)]
    assert torch.cat([y.reshape(-1) for y in ys]).tolist() == list(range(1, 30))


# --- model ------------------------------------------------------------------------------------------------
def test_gpt_shape_init_tying_and_causality():
    torch.manual_seed(0)
    m = build_gpt(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)
    assert m.lm_head.weight is m.wte.weight
    assert all(not n.endswith("bias") for n, _ in m.named_parameters())
    # 12 d^2 per block + token and position embeddings + 2 LayerNorm gains per block + the final one
    d = 16
    assert m.num_params() == 2 * 12 * d * d + 11 * d + 8 * d + (2 * 2 + 1) * d
    big = torch.cat([p.detach().reshape(-1) for n, p in m.named_parameters() if n.endswith("c_fc.weight")])
    proj = torch.cat([p.detach().reshape(-1) for n, p in m.named_parameters() if n.endswith("c_proj.weight")])
    assert abs(big.std().item() - 0.02) < 0.003 and abs(proj.std().item() - 0.02 / math.sqrt(4)) < 0.0015
    x = torch.randint(0, 11, (2, 8))
    x2 = x.clone()
    x2[:, 5:] = (x2[:, 5:] + 1) % 11
    m.eval()
    a, b = m(x), m(x2)
    assert a.shape == (2, 8, 11)
    assert torch.allclose(a[:, :5], b[:, :5]) and not torch.allclose(a[:, 5:], b[:, 5:])


def test_lm_loss_is_the_mean_negative_log_likelihood_of_every_target():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (2, 3), generator=g)
    by_hand = -sum(math.log(math.exp(logits[i, t, y[i, t]]) / sum(math.exp(v) for v in logits[i, t].tolist()))
                   for i in range(2) for t in range(3)) / 6
    assert abs(lm_loss(logits, y).item() - by_hand) < 1e-6


# --- optimizer and schedule -----------------------------------------------------------------------------------
def _gpt64(seed=0):
    torch.manual_seed(seed)
    return build_gpt(11, 8, 2, 2, 16).double()


def test_adamw_step_with_clipping_matches_torch_adamw_and_clip_grad_norm():
    m, ref = _gpt64(), _gpt64()
    step = make_step(m, None, lr=1e-2, weight_decay=0.1, mode="eager", optimizer="adamw", betas=(0.9, 0.99),
                     grad_clip=0.5, loss_fn=lm_loss)
    opt = torch.optim.AdamW(decay_groups(list(ref.parameters()), 0.1), lr=1e-2, betas=(0.9, 0.99))
    assert {len(g["params"]) for g in opt.param_groups} == {len([p for p in ref.parameters() if p.dim() >= 2]),
                                                           len([p for p in ref.parameters() if p.dim() < 2])}
    for i in range(5):
        g = torch.Generator().manual_seed(i)
        x, y = torch.randint(0, 11, (4, 8), generator=g), torch.randint(0, 11, (4, 8), generator=g)
        lr = 1e-2 * (i + 1) / 5
        step.set_lr(lr)
        for grp in opt.param_groups:
            grp["lr"] = lr
        step(x, y)
        opt.zero_grad()
        lm_loss(ref(x), y).backward()
        raw = [p.grad.clone() for p in ref.parameters()]
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        opt.step()
        # .grad keeps the raw gradient (the signals read it before clipping)
        assert all(torch.allclose(a.grad, r, atol=1e-12) for a, r in zip(m.parameters(), raw))
    for a, b in zip(m.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


def test_adamw_update_function_against_torch_single_tensor():
    g = torch.Generator().manual_seed(1)
    p = [torch.randn(3, 4, generator=g, dtype=torch.float64)]
    ref = [t.clone().requires_grad_() for t in p]
    opt = torch.optim.AdamW(ref, lr=0.1, betas=(0.8, 0.95), weight_decay=0.3, foreach=False)
    m, v, step = [torch.zeros_like(p[0])], [torch.zeros_like(p[0])], torch.zeros(())
    for _ in range(3):
        grad = [torch.randn(3, 4, generator=g, dtype=torch.float64)]
        ref[0].grad = grad[0].clone()
        opt.step()
        step += 1
        adamw_update(p, grad, m, v, step, torch.tensor(0.1, dtype=torch.float64), 0.8, 0.95, 1e-8, 0.3)
    assert torch.allclose(p[0], ref[0].detach(), atol=1e-14, rtol=0)


class _FakeGraph:
    def __init__(self, fn):
        self.fn = fn

    def replay(self):
        self.fn()


def test_graph_step_with_adamw_matches_eager_through_a_fake_graph(monkeypatch):
    monkeypatch.setattr(GraphStep, "_capture",
                        lambda self, x, y: {"graph": _FakeGraph(lambda: self._captured_step(x, y)), "x": x, "y": y})
    monkeypatch.setattr("deba.training.step._model_device", lambda model: torch.device("cuda"))
    m, ref = _gpt64(), _gpt64()
    kw = dict(lr=1e-2, weight_decay=0.1, optimizer="adamw", betas=(0.9, 0.99), grad_clip=1.0, loss_fn=lm_loss)
    graph = make_step(m, None, mode="graph", **kw)
    eager = make_step(ref, None, mode="eager", **kw)
    assert graph.mode == "graph" and type(graph).__name__ == "OptimGraphStep"
    for i in range(4):
        g = torch.Generator().manual_seed(i)
        x, y = torch.randint(0, 11, (4, 8), generator=g), torch.randint(0, 11, (4, 8), generator=g)
        for s in (graph, eager):
            s.set_lr(1e-2 / (i + 1))
            s(x, y)
    assert len(graph._graphs) == 1
    for a, b in zip(m.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)
    state = copy.deepcopy(eager.state_dict())
    graph.load_state_dict(state)  # in place: the buffers the graph reads
    held = graph.optimizer.state[next(iter(m.parameters()))]["exp_avg"]
    assert held.data_ptr() == graph.optimizer.state[next(iter(m.parameters()))]["exp_avg"].data_ptr()
    assert float(graph._step_t) == 4.0


def test_warmup_then_cosine_to_min_lr_is_nanogpts_schedule_in_samples():
    def nanogpt(it, lr=1e-3, warm=100, decay=2000, min_lr=1e-4):
        if it < warm:
            return lr * (it + 1) / (warm + 1)
        ratio = (it - warm) / (decay - warm)
        return min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr - min_lr)

    for it in (0, 1, 50, 99, 100, 101, 1000, 1999, 2000):
        ours = learning_rate(1e-3, schedule="cosine", scaling="none", batch_size=12, reference_batch=12,
                             samples_seen=12 * it, total_samples=24000, warmup_samples=1200, min_lr=1e-4)
        assert abs(ours - nanogpt(it)) < 1e-15


# --- the trainer on text --------------------------------------------------------------------------------------
def test_train_on_text_writes_loss_bpc_vocab_and_tokens(corpus, tmp_path):
    s = train(_cfg(corpus, tmp_path / "run", epochs=1))
    assert s["task"] == "language-model" and s["metric"] == "final_val_loss"
    assert s["metric_higher_is_better"] is False and s["final_test_acc"] is None
    assert s["final_val_loss"] < math.log(len(set(CORPUS)))  # it learned something
    assert abs(s["final_val_bpc"] - s["final_val_loss"] / math.log(2)) < 1e-12
    rec = json.loads((tmp_path / "run" / "epochs.jsonl").read_text().splitlines()[0])
    assert rec["tokens"] == rec["samples"] * 8 and rec["val_loss"] == s["final_val_loss"]
    assert rec["samples"] == (int(len(CORPUS) * 0.9) // 8) // 8 * 8
    assert Vocab.load(tmp_path / "run" / "vocab.json").chars == sorted(set(CORPUS))


def test_val_loss_is_the_models_loss_over_the_whole_split_by_hand(corpus, tmp_path):
    from deba.training.trainer import Trainer

    tr = Trainer(_cfg(corpus, tmp_path / "r", epochs=1))
    val = tr.lm.text.val
    logits = tr.model.eval()(val[:-1].long().unsqueeze(0)[:, :8])  # first window by hand
    total, n = 0.0, 0
    for s in range(0, val.numel() - 1, 8):
        x = val[s:s + 8 + 1].long()
        out = tr.model(x[:-1].unsqueeze(0))
        total += F.cross_entropy(out[0].double(), x[1:], reduction="sum").item()
        n += x.numel() - 1
    assert logits.shape[-1] == tr.lm.text.vocab.size
    assert abs(tr.evaluate()[1] - total / n) < 1e-5


def test_max_samples_stops_mid_epoch_and_ends_the_schedule_there(corpus, tmp_path):
    s = train(_cfg(corpus, tmp_path / "run", epochs=3, max_samples=40, lr_schedule="cosine"))
    assert s["samples_seen"] == 40 and s["steps"] == 5 and s["status"] == "complete"
    assert s["final_val_loss"] is not None and s["epochs_completed"] == 1


def test_resume_is_bit_identical_on_cpu(corpus, tmp_path):
    kw = dict(optimizer="adamw", grad_clip=1.0, lr_schedule="cosine", warmup_samples=16, min_lr=1e-4, dropout=0.1)
    train(_cfg(corpus, tmp_path / "full", epochs=3, **kw))

    class Kill:
        def on_epoch_end(self, trainer, rec):
            if rec["epoch"] == 2:  # before epoch 2's checkpoint: the one on disk is epoch 1's
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(corpus, tmp_path / "cut", epochs=3, **kw), callbacks=[Kill()])
    train(_cfg(corpus, tmp_path / "cut", epochs=3, **kw), resume=True)

    def recs(run):
        out = [json.loads(line) for line in (tmp_path / run / "epochs.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.endswith("time_s") and k != "events"} for r in out]

    assert recs("full") == recs("cut")
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_accumulation_gives_the_full_batch_update(corpus, tmp_path):
    a = train(_cfg(corpus, tmp_path / "a", epochs=1))
    b = train(_cfg(corpus, tmp_path / "b", epochs=1, micro_batch=3))
    assert abs(a["final_val_loss"] - b["final_val_loss"]) < 1e-5


@pytest.mark.parametrize("policy, extra", [
    ("deba", dict(theta_stab=0.9, theta_conf=0.9, cooldown=0, window=2, decision_interval=6,
                  decision_interval_unit="steps")),
    ("gns", dict(decision_interval=48, decision_interval_unit="samples")),
])
def test_adaptive_policies_decide_on_a_language_model(corpus, tmp_path, policy, extra):
    s = train(_cfg(corpus, tmp_path / "run", epochs=2, policy=policy, **extra))
    decisions = [json.loads(line) for line in (tmp_path / "run" / "decisions.jsonl").read_text().splitlines()]
    assert len(decisions) >= 2 and s["final_val_loss"] is not None
    assert all(d["grad_norm"] is not None and math.isfinite(d["grad_norm"]) for d in decisions)


def test_grad_clip_on_an_image_model_bounds_each_update_and_leaves_the_signals_unclipped(tmp_path):
    from deba.training.trainer import Trainer

    base = dict(arch="tiny_mlp", dataset="synthetic", epochs=1, policy="fixed", device="cpu", quiet=True,
                start_batch=32, lr=0.5, momentum=0.0, weight_decay=0.0, seed=0)
    first = [p.detach().clone() for p in Trainer(TrainConfig(**base)).model.parameters()]
    clipped = Trainer(TrainConfig(**base, grad_clip=1e-3))
    clipped.fit()
    moved = math.sqrt(sum(((a.detach() - b) ** 2).sum().item() for a, b in zip(clipped.model.parameters(), first)))
    assert 0 < moved <= 0.5 * 1e-3 * clipped.state.steps * (1 + 1e-6)  # each update: at most lr x clip
    assert clipped.state.records[0]["grad_norm"] > 10 * 1e-3  # the signal read the raw gradient


# --- the command line: sample, bad input ----------------------------------------------------------------------
def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_cli_train_then_sample(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--dataset", "text", "--data", str(corpus), "--epochs", "1", "--policy", "fixed",
                 "--out", str(out)]) == 0
    assert (out / "sample.txt").exists()
    capsys.readouterr()
    assert main(["sample", "--run", str(out), "--prompt", "the quick", "--tokens", "20"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("the quick") and len(text.rstrip("\n")) >= len("the quick") + 15


def test_cli_bad_input_is_one_line_exit_2_and_changes_nothing(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--dataset", "text", "--data", str(corpus), "--epochs", "1", "--policy", "fixed",
                 "--out", str(out)]) == 0
    before = _digest(out)
    capsys.readouterr()

    def fails(argv, words):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
        assert _digest(out) == before

    fails(["sample", "--run", str(out), "--prompt", "QZX", "--tokens", "5"], "not in the run's vocabulary")
    corpus.write_text(CORPUS.replace("q", "Q"), encoding="utf-8")  # the same path, other characters
    fails(["train", *TINY, "--dataset", "text", "--data", str(corpus), "--epochs", "2", "--policy", "fixed",
           "--out", str(out), "--resume"], "vocabulary mismatch")
    vocab = json.loads((out / "vocab.json").read_text())
    (out / "vocab.json").write_text(json.dumps({**vocab, "chars": vocab["chars"][:-1]}))
    before = _digest(out)
    fails(["sample", "--run", str(out), "--tokens", "5"], "vocabulary mismatch")
    fails(["train", *TINY[2:], "--arch", "tiny_cnn", "--policy", "fixed", "--dataset", "text", "--data", str(corpus), "--out",
           str(tmp_path / "n")], "use --arch gpt")
    assert not (tmp_path / "n").exists()
    for name, content, words in (("bin.txt", b"\x00\x01" * 500, "binary"), ("empty.txt", b"", "empty"),
                                 ("short.txt", b"abc" * 20, "fewer than 10 x")):
        (tmp_path / name).write_bytes(content)
        fails(["train", *TINY, "--dataset", "text", "--data", str(tmp_path / name), "--out", str(tmp_path / "n")],
              words)
        assert not (tmp_path / "n").exists()


# --- report, study line, verdict: a lower-is-better metric ------------------------------------------------------
def test_report_reads_the_validation_loss_as_lower_better(corpus, tmp_path):
    import shutil

    from deba import report
    from deba.study import _result_text

    src = tmp_path / "src"
    s = train(_cfg(corpus, src, epochs=1, checkpoint_every=0))
    assert _result_text(s).startswith(f"val loss {s['final_val_loss']:.4f}")
    root = tmp_path / "study"
    losses = {("fixed", 1): 2.0, ("fixed", 2): 2.1, ("other", 1): 1.9, ("other", 2): 2.3}
    for (arm, seed), loss in losses.items():
        d = root / "text" / "gpt" / arm / f"seed{seed}"
        shutil.copytree(src, d)
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(seed=seed, policy="fixed" if arm == "fixed" else "step-grow", milestones=[] if arm == "fixed" else [5])
        (d / "config.json").write_text(json.dumps(cfg))
        summ = json.loads((d / "summary.json").read_text())
        summ.update(seed=seed, final_val_loss=loss, best_val_loss=loss, policy=cfg["policy"])
        (d / "summary.json").write_text(json.dumps(summ))
    runs = report.load_runs([root])
    assert all(r.complete and not r.higher_is_better for r in runs.runs)
    goal = report.table_goal(runs, baseline="fixed")
    row = goal[goal.arm == "other"].iloc[0]
    assert row.n_pairs == 2 and row.seeds_acc_at_least_baseline == 1  # 1.9 <= 2.0 yes, 2.3 <= 2.1 no
    assert row.per_seed.startswith("1: -0.10")
    res = report.build_report([root], tmp_path / "rep", figures=False, baseline="fixed")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "val loss (lower better)" in md and "validation loss in nats" in md
    other = res["table4"][res["table4"].arm == "other"].iloc[0]
    assert other.acc_mean == pytest.approx(2.1) and math.isnan(other.acc_per_s)
    # every arm vs a reference arm: labelled as a loss, three decimals, no loss per second
    vs = report.table_vs_reference(runs, reference="fixed")
    row = vs[vs.arm == "other"].iloc[0]
    assert row.metric == "final_val_loss" and math.isnan(row.acc_per_s) and math.isnan(row.reference_acc_per_s)
    assert row.delta_acc == pytest.approx(0.05)  # (1.9 - 2.0 + 2.3 - 2.1) / 2, paired per seed
    report.build_report([root], tmp_path / "rep2", figures=False, baseline="fixed", reference="fixed")
    md = (tmp_path / "rep2" / "report.md").read_text()
    section = md.split("## Every arm vs")[1].split("\n## ")[0]
    assert "| val loss | ref val loss | Δval loss vs ref |" in section and "| +0.050 ± 0.212 |" in section


@pytest.mark.slow
def test_two_rank_ddp_trains_the_language_model_a_single_process_trains(corpus, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["-m", "deba", "train", *TINY, "--dataset", "text", "--data", str(corpus), "--epochs", "2",
            "--policy", "fixed", "--optimizer", "adamw", "--grad-clip", "1.0", "--seed", "5"]
    subprocess.run([sys.executable, *args, "--out", str(tmp_path / "single")], check=True, env=env, timeout=600)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        str(port), *args, "--out", str(tmp_path / "ddp")], env=env, timeout=600, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-3000:]

    def recs(run):
        return [json.loads(line) for line in (tmp_path / run / "epochs.jsonl").read_text().splitlines()]

    for a, b in zip(recs("single"), recs("ddp"), strict=True):
        assert a["steps"] == b["steps"] and a["tokens"] == b["tokens"]
        for key in ("loss", "grad_norm", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["world_size"] == 2
    assert (tmp_path / "ddp" / "sample.txt").exists()


def test_out_of_memory_at_a_grown_batch_caps_it_and_the_epoch_goes_on(corpus, tmp_path):
    from deba.training.trainer import OOM_ERRORS, Trainer

    trained = []

    def factory(*args, **kwargs):
        real = make_step(*args, **kwargs)

        class Step:
            mode = "eager"

            def __call__(self, x, y):
                if x.shape[0] > 8:
                    raise OOM_ERRORS[0]("CUDA out of memory (injected)")
                trained.append(int(x.shape[0]))
                real(x, y)

            def __getattr__(self, name):
                return getattr(real, name)

        return Step()

    cfg = _cfg(corpus, tmp_path / "o", epochs=3, policy="step-grow", milestones=[1], grow_factor=2.0)
    s = Trainer(cfg, step_factory=factory).fit()
    assert s["b_max_cap"] == 8 and s["status"] == "complete" and set(trained) == {8}
    n = int(len(CORPUS) * 0.9) // 8
    assert s["steps"] == 3 * (n // 8) and s["final_val_loss"] is not None


def test_bench_times_the_gpt_step_in_tokens():
    from deba.bench import make_settings, run_bench

    res = run_bench(make_settings(archs=["gpt"], batch_sizes=[2], device="cpu", steps=1, warmup=0, overhead=False))
    (rec,) = res["records"]
    assert rec["arch"] == "gpt" and rec["tokens_per_s"] == pytest.approx(rec["images_per_s"] * 64)


def test_a_study_spec_may_name_the_text_datasets(tmp_path, corpus):
    from deba.study import expand, load_spec

    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: t\nepochs: 1\ndatasets: [text]\narchs: [gpt]\nseeds: [1]\ndata: {{text: {corpus}}}\n"
                    "arms:\n  fixed: {policy: fixed}\n")
    plans = expand(load_spec(spec))
    assert [p.run_id for p in plans] == ["text/gpt/fixed/seed1"]


def test_a_users_language_model_trains_through_the_python_api(corpus, tmp_path):
    class Bigram(torch.nn.Module):  # any module with model(idx) -> logits [B, T, V]
        def __init__(self, vocab):
            super().__init__()
            self.table = torch.nn.Embedding(vocab, vocab)

        def forward(self, idx):
            return self.table(idx)

    vocab = len(set(CORPUS))
    s = train(_cfg(corpus, tmp_path / "u", epochs=2, lr=0.5, optimizer="sgd", arch="resnet18"), model=Bigram(vocab))
    assert s["final_val_loss"] < math.log(vocab) and s["task"] == "language-model"
