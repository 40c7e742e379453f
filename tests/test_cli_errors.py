"""Bad input to every `deba` command: exit code 2, exactly one line on stderr naming the problem, no
traceback, and nothing already written damaged.

The table below is the durable part of a systematic sweep (missing and wrong-kind paths, empty, binary and
truncated files, wrong types in config files, out-of-range numbers, unknown names, broken user models,
unwritable outputs). Rows marked "crashed before" were raw tracebacks or silent misreadings before the fix
that came with this file.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from deba.cli import main
from deba.logio import write_json

HAS_CUDA = torch.cuda.is_available()
TRAIN = ["train", "--arch", "tiny_cnn", "--dataset", "synthetic", "--device", "cpu", "--quiet", "--epochs", "1",
         "--policy", "fixed", "--checkpoint-every", "0"]
DEBA = ["train", "--arch", "tiny_cnn", "--dataset", "synthetic", "--device", "cpu", "--quiet", "--epochs", "1",
        "--policy", "deba", "--theta-stab", "0.5", "--theta-conf", "0.6"]
BENCH = ["bench", "--device", "cpu", "--arch", "tiny_cnn", "--steps", "1", "--warmup", "0", "--quiet", "--no-overhead"]
PROFILE = ["profile", "--arch", "tiny_cnn", "--dataset", "synthetic", "--device", "cpu", "--quiet"]
USER_MODULE = "deba_cli_errors_usermodels"  # a module name no other test imports

USER_MODELS = '''
import torch

def raises(num_classes=10):
    raise RuntimeError("boom in the user's constructor")

def not_a_module(num_classes=10):
    return 42

def wrong_input(num_classes=10):
    return torch.nn.Linear(7, num_classes)  # cannot take 3x32x32 images

def three_logits(num_classes=10):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))
'''


def _log_lines(n: int) -> str:
    # a hand-made per-epoch log with finite, varying signals (enough epochs to calibrate)
    return "".join(json.dumps({"epoch": e, "grad_var": 1.0 + 0.3 * e, "grad_norm": 2.0 - 0.1 * e,
                               "loss": 3.0 / e}) + "\n" for e in range(1, n + 1))


def _run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One complete 1-epoch fixed-batch run (config.json, epochs.jsonl, summary.json, checkpoint.pt)."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--arch", "tiny_cnn", "--dataset", "synthetic", "--device", "cpu", "--quiet",
                 "--epochs", "1", "--policy", "fixed", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory, finished_run) -> Path:
    """Every bad (and a few good) inputs the table points at, under one folder."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "folder").mkdir()
    (d / "afile").write_text("not a folder\n")
    (d / "good.jsonl").write_text(_log_lines(6))
    (d / "two.jsonl").write_text(_log_lines(2))
    (d / "empty.jsonl").write_text("")
    (d / "garbage.bin").write_bytes(bytes(range(256)) * 4)
    (d / "truncated.jsonl").write_text(_log_lines(3)[:-25])
    (d / "nan.jsonl").write_text("".join(f'{{"epoch": {e}, "grad_var": NaN, "grad_norm": NaN, "loss": NaN}}\n'
                                         for e in range(1, 6)))
    (d / "unordered.jsonl").write_text("\n".join(_log_lines(3).splitlines()[::-1]) + "\n")
    (d / "notthresholds.json").write_text('{"theta_stab": 0.1}\n')
    (d / "list.json").write_text("[1, 2]\n")
    # training config files
    configs = {
        "str_for_int.yaml": "epochs: ten\n", "list_for_scalar.yaml": "lr: [0.1]\n", "null.yaml": "epochs: null\n",
        "str_for_bool.yaml": "augment: 'yes'\n", "str_seed.yaml": "seed: abc\n", "int_out.yaml": "out: 5\n",
        "unknown_key.yaml": "no_such_key: 1\n", "bad.yaml": "arch: tiny_cnn\n  bad: : x\n",
        "truncated.json": '{"epochs": 1,', "sequence.yaml": "- 1\n- 2\n", "str_milestones.yaml": "milestones: 3\n",
    }
    for name, text in configs.items():
        (d / name).write_text(text)
    shutil.copy(d / "garbage.bin", d / "garbage.yaml")
    (d / f"{USER_MODULE}.py").write_text(USER_MODELS)
    (d / "syntax_error_mod.py").write_text("def f(:\n")
    # checkpoints: truncated, and a torch file that is not a deba checkpoint
    for name in ("corrupt", "foreign"):
        shutil.copytree(finished_run, d / name)
    ck = d / "corrupt" / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:1000])
    torch.save({"weights": torch.zeros(2)}, d / "foreign" / "checkpoint.pt")
    # study specs
    spec = ("name: t\nepochs: 1\ndatasets: [synthetic]\narchs: [tiny_cnn]\nseeds: [1]\n"
            "common: {device: cpu, graphs: 'off'}\narms:\n  fixed: {policy: fixed}\n")
    (d / "spec.yaml").write_text(spec)
    studies = {
        "spec_bad.yaml": "name: t\n  x: : y\n", "spec_truncated.yaml": "name: t\nepochs: 1\ndatasets: [synth",
        "spec_empty.yaml": "", "spec_list.yaml": "- 1\n", "spec_unknown.yaml": spec + "colour: blue\n",
        "spec_no_seeds.yaml": spec.replace("seeds: [1]", "seeds: []"),
        "spec_no_archs.yaml": spec.replace("archs: [tiny_cnn]", "archs: []"),
        "spec_str_epochs.yaml": spec.replace("epochs: 1", "epochs: ten"),
        "spec_unknown_arm_key.yaml": spec.replace("{policy: fixed}", "{policy: fixed, bogus: 1}"),
        "spec_str_batch.yaml": spec.replace("{policy: fixed}", "{policy: fixed, start_batch: big}"),
    }
    for name, text in studies.items():
        (d / name).write_text(text)
    shutil.copy(d / "garbage.bin", d / "spec_garbage.yaml")
    # report inputs: study-like folders with one run each, damaged in one way
    runs = d / "reports"
    for name in ("good", "half", "epochs_str", "seed_str", "cooldown_str"):
        shutil.copytree(finished_run, runs / name / "synthetic" / "tiny_cnn" / "fixed" / "seed42",
                        ignore=shutil.ignore_patterns("*.pt"))
    (runs / "empty").mkdir()
    summary = runs / "half" / "synthetic" / "tiny_cnn" / "fixed" / "seed42" / "summary.json"
    summary.write_text(summary.read_text()[:60])
    for name, fname, key, value in (("epochs_str", "config.json", "epochs", "x"),
                                    ("seed_str", "summary.json", "seed", "a"),
                                    ("cooldown_str", "config.json", "cooldown", "x")):
        p = runs / name / "synthetic" / "tiny_cnn" / "fixed" / "seed42" / fname
        p.write_text(json.dumps({**json.loads(p.read_text()), key: value}))
    with tarfile.open(d / "pack.tar.gz", "w:gz") as tar:
        tar.add(finished_run / "summary.json", arcname="synthetic/tiny_cnn/fixed/seed42/summary.json")
    (d / "truncated.tar.gz").write_bytes((d / "pack.tar.gz").read_bytes()[:40])
    shutil.copy(d / "garbage.bin", d / "garbage.tar.gz")
    return d


# what each row did before the fixes that came with this file ("": already right, message aside)
C = "crashed"  # a raw traceback
S = "silent"  # accepted and misread (or overwrote data) without a word
L = "late"  # an error only after the work was done, or a misleading or multi-line message
CASES = [
    # id, argv ({d}: the inputs folder), what the error line must say, note
    # --- replay
    ("replay-missing", ["replay", "{d}/absent.jsonl", "--arch", "resnet18"], r"absent\.jsonl: no such file", ""),
    ("replay-folder", ["replay", "{d}/folder", "--arch", "resnet18"], r"folder: is a folder, not a file", L),
    ("replay-empty", ["replay", "{d}/empty.jsonl", "--arch", "resnet18"], r"empty\.jsonl: no records", ""),
    ("replay-binary", ["replay", "{d}/garbage.bin", "--arch", "resnet18"], r"garbage\.bin: not a UTF-8 text file", ""),
    ("replay-truncated", ["replay", "{d}/truncated.jsonl", "--arch", "resnet18"], r"truncated\.jsonl:3: not valid JSON", ""),
    ("replay-unordered", ["replay", "{d}/unordered.jsonl", "--arch", "resnet18"], r"epochs must be consecutive", ""),
    ("replay-arch", ["replay", "{d}/good.jsonl", "--arch", "nope"], r"no thresholds for architecture 'nope'", ""),
    ("replay-no-arch", ["replay", "{d}/good.jsonl"], r"--arch is required", ""),
    ("replay-preset", ["replay", "{d}/good.jsonl", "--arch", "resnet18", "--preset", "nope"], r"invalid choice: 'nope'", ""),
    ("replay-window-0", ["replay", "{d}/good.jsonl", "--arch", "resnet18", "--window", "0"], r"--window must be >= 1", ""),
    ("replay-window-huge", ["replay", "{d}/good.jsonl", "--arch", "resnet18", "--window", "9" * 20],
     r"--window must be at most", C),
    ("replay-cooldown-neg", ["replay", "{d}/good.jsonl", "--arch", "resnet18", "--cooldown", "-1"], r"--cooldown must be >= 0", ""),
    ("replay-cooldown-str", ["replay", "{d}/good.jsonl", "--arch", "resnet18", "--cooldown", "x"], r"invalid int value: 'x'", ""),
    ("replay-bmin-0", ["replay", "{d}/good.jsonl", "--arch", "resnet18", "--b-min", "0"], r"--b-min must be >= 1", ""),
    ("replay-theta-nan", ["replay", "{d}/good.jsonl", "--arch", "resnet18", "--theta-stab", "nan"], r"--theta-stab must be a finite", ""),
    ("replay-grow-1", ["replay", "{d}/good.jsonl", "--arch", "resnet18", "--grow-factor", "1"], r"--grow-factor must be > 1", ""),
    ("replay-rollback-0", ["replay", "{d}/good.jsonl", "--arch", "resnet18", "--rollback-factor", "0"], r"--rollback-factor must be in \(0, 1\)", ""),
    ("replay-out-folder", ["replay", "{d}/good.jsonl", "--arch", "resnet18", "--out", "{d}/folder"], r"folder: it is a folder", ""),
    ("replay-out-under-file", ["replay", "{d}/good.jsonl", "--arch", "resnet18", "--out", "{d}/afile/x.jsonl"],
     r"afile is a file, not a folder", L),
    # --- calibrate
    ("calibrate-2-epochs", ["calibrate", "{d}/two.jsonl"], r"two\.jsonl: too few usable epochs .* need at least 3", ""),
    ("calibrate-nan-only", ["calibrate", "{d}/nan.jsonl"], r"nan\.jsonl: too few usable epochs to calibrate: 0", ""),
    ("calibrate-binary", ["calibrate", "{d}/garbage.bin"], r"garbage\.bin: not a UTF-8 text file", C),
    ("calibrate-unordered", ["calibrate", "{d}/unordered.jsonl"], r"epochs must be consecutive", ""),
    ("calibrate-window-0", ["calibrate", "{d}/good.jsonl", "--window", "0"], r"--window must be in \[1, ", ""),
    ("calibrate-window-huge", ["calibrate", "{d}/good.jsonl", "--window", "9" * 20], r"--window must be in \[1, ", C),
    ("calibrate-conf", ["calibrate", "{d}/good.jsonl", "--conf", "x"], r"invalid choice: 'x'", ""),
    ("calibrate-thresholds-folder", ["calibrate", "{d}/good.jsonl", "--write-thresholds", "{d}/folder"],
     r"thresholds file .*folder is a folder, not a file", C),
    ("calibrate-thresholds-under-file", ["calibrate", "{d}/good.jsonl", "--write-thresholds", "{d}/afile/t.json"],
     r"afile is a file, not a folder", C),
    # --- train: config files
    ("config-missing", [*TRAIN, "--config", "{d}/absent.yaml"], r"absent\.yaml: no such config file", ""),
    ("config-binary", [*TRAIN, "--config", "{d}/garbage.yaml"], r"garbage\.yaml: not a UTF-8 text file", C),
    ("config-bad-yaml", [*TRAIN, "--config", "{d}/bad.yaml"], r"bad\.yaml: cannot parse config", ""),
    ("config-truncated-json", [*TRAIN, "--config", "{d}/truncated.json"], r"truncated\.json: cannot parse config", ""),
    ("config-sequence", [*TRAIN, "--config", "{d}/sequence.yaml"], r"must hold a mapping", ""),
    ("config-unknown-key", [*TRAIN, "--config", "{d}/unknown_key.yaml"], r"unknown key\(s\) no_such_key", ""),
    ("config-str-for-int", ["train", "--config", "{d}/str_for_int.yaml"], r"epochs must be an integer, got 'ten'", ""),
    ("config-list-for-float", [*TRAIN, "--config", "{d}/list_for_scalar.yaml"], r"lr must be a number, got \[0\.1\]", ""),
    ("config-null", ["train", "--config", "{d}/null.yaml"], r"epochs must not be null", ""),
    ("config-str-for-bool", [*TRAIN, "--config", "{d}/str_for_bool.yaml"], r"augment must be true or false", S),
    ("config-str-seed", [*TRAIN, "--config", "{d}/str_seed.yaml"], r"seed must be an integer, got 'abc'", C),
    ("config-int-out", [*TRAIN, "--config", "{d}/int_out.yaml"], r"out must be a string, got 5", C),
    ("config-str-milestones", [*TRAIN, "--config", "{d}/str_milestones.yaml"], r"milestones must be a list of integers", S),
    # --- train: numbers
    ("train-epochs-0", [*TRAIN, "--epochs", "0"], r"epochs must be an integer >= 1, got 0", ""),
    ("train-start-batch-neg", [*TRAIN, "--start-batch", "-1"], r"start_batch must be an integer >= 1", ""),
    ("train-start-batch-huge", [*TRAIN, "--start-batch", "100000"], r"larger than the 2000 training", ""),
    ("train-eval-every-0", [*TRAIN, "--eval-every", "0"], r"eval_every must be an integer >= 1", ""),
    ("train-micro-batch-0", [*TRAIN, "--micro-batch", "0"], r"micro_batch must be an integer >= 1", ""),
    ("train-decision-interval-0", [*TRAIN, "--decision-interval", "0"], r"decision_interval must be an integer >= 1", ""),
    ("train-subset-0", [*TRAIN, "--subset", "0"], r"subset must be an integer >= 1", ""),
    ("train-subset-huge", [*TRAIN, "--subset", "100000"], r"--subset 100000 is larger than the 2000", ""),
    ("train-checkpoint-every-neg", [*TRAIN, "--checkpoint-every", "-1"], r"checkpoint_every must be >= 0", ""),
    ("train-lr-0", [*TRAIN, "--lr", "0"], r"lr must be > 0", ""),
    ("train-lr-nan", [*TRAIN, "--lr", "nan"], r"lr must be a finite number", ""),
    ("train-momentum-neg", [*TRAIN, "--momentum", "-1"], r"momentum must be a number >= 0", ""),
    ("train-window-0-fixed", [*TRAIN, "--window", "0"], r"window must be an integer >= 1, got 0", S),
    ("train-window-huge", [*DEBA, "--window", "9" * 20], r"window must be at most", C),
    ("train-cooldown-neg", [*DEBA, "--cooldown", "-1"], r"cooldown must be an integer >= 0", ""),
    ("train-grow-1", [*DEBA, "--grow-factor", "1"], r"grow_factor must be > 1", ""),
    ("train-rollback-2", [*DEBA, "--rollback-factor", "2"], r"rollback_factor must be in \(0, 1\)", ""),
    ("train-theta-0", [*DEBA, "--theta-stab", "0"], r"theta_stab must be > 0", ""),
    ("train-bmin-gt-bmax", [*DEBA, "--b-min", "100", "--b-max", "50"], r"--b-min \(100\) must not exceed --b-max \(50\)", ""),
    ("train-milestones-0", [*TRAIN, "--policy", "step-grow", "--milestones", "0"], r"milestones >= 1", ""),
    ("train-step-grow-no-milestones", [*TRAIN, "--policy", "step-grow"], r"step-grow needs milestones", ""),
    # --- train: names
    ("train-arch", [*TRAIN, "--arch", "nope"], r"unknown model 'nope'", ""),
    ("train-dataset", [*TRAIN, "--dataset", "nope"], r"unknown dataset 'nope'", ""),
    ("train-policy", [*TRAIN, "--policy", "nope"], r"policy must be one of", ""),
    ("train-preset", [*TRAIN, "--preset", "nope"], r"preset must be one of paper, paper-bounded, got 'nope'", S),
    ("train-deba-no-thresholds", [*TRAIN, "--policy", "deba"], r"no thresholds for architecture 'tiny_cnn'", ""),
    ("train-device-tpu", [*TRAIN, "--device", "tpu"], r"unknown device 'tpu'", ""),
    ("train-device-meta", [*TRAIN, "--device", "meta"], r"device 'meta' is not supported", C),
    pytest.param("train-device-cuda", [*TRAIN, "--device", "cuda"], r"CUDA is not available here", "",
                 marks=pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")),
    ("train-data-missing", [*TRAIN, "--dataset", "cifar10", "--data", "{d}/absent"], r"no CIFAR-10 data found", ""),
    # --- train: a user's model
    ("model-no-module", [*TRAIN, "--model", "no_such_module_xyz:fn"], r"cannot import 'no_such_module_xyz'", ""),
    ("model-no-function", [*TRAIN, "--model", f"{USER_MODULE}:absent"], rf"module '{USER_MODULE}' has no 'absent'", ""),
    ("model-raises", [*TRAIN, "--model", f"{USER_MODULE}:raises"],
     r"raises\(num_classes=10\) raised RuntimeError: boom in the user's constructor", C),
    ("model-not-module", [*TRAIN, "--model", f"{USER_MODULE}:not_a_module"], r"returned int, not a torch\.nn\.Module", ""),
    ("model-wrong-input", [*TRAIN, "--model", f"{USER_MODULE}:wrong_input"], r"fails on a batch of 3x32x32 inputs", C),
    ("model-wrong-logits", [*TRAIN, "--model", f"{USER_MODULE}:three_logits"],
     r"must return logits of shape \(batch, 10\) .* got \(2, 3\)", C),
    ("model-syntax-error", [*TRAIN, "--model", "syntax_error_mod:f"], r"importing 'syntax_error_mod' failed: SyntaxError", C),
    ("model-bad-spec", [*TRAIN, "--model", ":fn"], r"expected 'package\.module:function'", ""),
    # --- train: thresholds files
    ("thresholds-missing", [*DEBA, "--thresholds", "{d}/absent.json"], r"absent\.json: no such file", ""),
    ("thresholds-not-thresholds", [*DEBA, "--thresholds", "{d}/notthresholds.json"], r"missing 'schema_version'", ""),
    ("thresholds-list", [*DEBA, "--thresholds", "{d}/list.json"], r"list\.json: expected a JSON object", ""),
    ("thresholds-jsonl", [*DEBA, "--thresholds", "{d}/good.jsonl"], r"good\.jsonl: not valid JSON", ""),
    ("thresholds-folder", [*DEBA, "--thresholds", "{d}/folder"], r"folder: is a folder, not a file", L),
    # --- train: --out and --resume
    ("out-is-file", [*TRAIN, "--out", "{d}/afile"], r"--out .*afile is an existing file, not a folder", C),
    ("out-under-file", [*TRAIN, "--out", "{d}/afile/run"], r"afile is a file, not a folder", C),
    pytest.param("out-in-proc", [*TRAIN, "--out", "/proc/deba-run"], r"cannot create output folder /proc/deba-run", C,
                 marks=pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")),
    ("resume-corrupt", [*TRAIN, "--resume", "--out", "{d}/corrupt"], r"checkpoint is corrupt or unreadable", ""),
    ("resume-foreign", [*TRAIN, "--resume", "--out", "{d}/foreign"], r"not a deba checkpoint", ""),
    ("out-holds-run", [*TRAIN, "--out", "{d}/corrupt"], r"already holds a run .*pass --resume", S),
    # --- profile, demo
    ("profile-2-epochs", [*PROFILE, "--epochs", "2", "--seeds", "1", "--out", "{d}/profile"],
     r"--epochs 2: calibration needs at least 3 epochs", L),
    ("profile-duplicate-seeds", [*PROFILE, "--epochs", "3", "--seeds", "1", "1", "--out", "{d}/profile"],
     r"--seeds lists seed 1 twice", S),
    ("profile-out-is-file", [*PROFILE, "--epochs", "3", "--seeds", "1", "--out", "{d}/afile"],
     r"afile is an existing file, not a folder", C),
    ("demo-2-epochs", ["demo", "--epochs", "2", "--out", "{d}/demo"], r"--epochs must be at least 3", L),
    ("demo-device", ["demo", "--epochs", "3", "--device", "tpu", "--out", "{d}/demo"], r"unknown device 'tpu'", ""),
    # --- bench
    ("bench-size-0", [*BENCH, "--batch-sizes", "0"], r"batch size must be an integer >= 1, got '0'", ""),
    ("bench-size-text", [*BENCH, "--batch-sizes", "x"], r"batch size must be an integer >= 1, got 'x'", ""),
    ("bench-size-float", [*BENCH, "--batch-sizes", "1e3"], r"got '1e3'", ""),
    ("bench-size-empty", [*BENCH, "--batch-sizes", ","], r"empty list", ""),
    ("bench-size-gt-epoch", [*BENCH, "--batch-sizes", "8", "--epoch-samples", "4"], r"batch size 8 exceeds the epoch", ""),
    ("bench-steps-0", [*BENCH, "--steps", "0", "--batch-sizes", "4"], r"steps must be an integer >= 1", ""),
    ("bench-warmup-neg", [*BENCH, "--warmup", "-1", "--batch-sizes", "4"], r"warmup must be an integer >= 0", ""),
    ("bench-arch", [*BENCH, "--arch", "nope", "--batch-sizes", "4"], r"unknown model 'nope'", ""),
    ("bench-model-raises", [*BENCH, "--arch", f"{USER_MODULE}:raises", "--batch-sizes", "4"], r"raised RuntimeError", C),
    ("bench-model-wrong-input", [*BENCH, "--arch", f"{USER_MODULE}:wrong_input", "--batch-sizes", "4"],
     r"fails on a batch of 3x32x32 inputs", C),
    ("bench-mode", [*BENCH, "--modes", "fast", "--batch-sizes", "4"], r"unknown mode 'fast'", ""),
    ("bench-device", [*BENCH, "--device", "tpu", "--batch-sizes", "4"], r"unknown device 'tpu'", ""),
    ("bench-rtol-alone", [*BENCH, "--check-rtol", "0.1"], r"--check-rtol goes with --check", ""),
    ("bench-out-folder", [*BENCH, "--batch-sizes", "4", "--out", "{d}/folder"], r"--out .*folder is a folder, not a file", C),
    ("bench-plot-under-file", [*BENCH, "--batch-sizes", "4", "--plot", "{d}/afile/f.png"], r"afile is a file, not a folder", C),
    pytest.param("bench-check-cpu", ["bench", "--check", "--device", "cpu"], r"it needs a CUDA device", "",
                 marks=pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")),
    # --- study
    ("study-missing", ["study", "{d}/absent.yaml", "--out", "{d}/s"], r"absent\.yaml: no such study spec", ""),
    ("study-bad-yaml", ["study", "{d}/spec_bad.yaml", "--out", "{d}/s"], r"cannot parse YAML", ""),
    ("study-truncated", ["study", "{d}/spec_truncated.yaml", "--out", "{d}/s"], r"cannot parse YAML", ""),
    ("study-binary", ["study", "{d}/spec_garbage.yaml", "--out", "{d}/s"], r"not a UTF-8 text file", C),
    ("study-empty", ["study", "{d}/spec_empty.yaml", "--out", "{d}/s"], r"a study spec must be a mapping", ""),
    ("study-list", ["study", "{d}/spec_list.yaml", "--out", "{d}/s"], r"a study spec must be a mapping", ""),
    ("study-unknown-key", ["study", "{d}/spec_unknown.yaml", "--out", "{d}/s"], r"unknown key\(s\) colour", ""),
    ("study-no-seeds", ["study", "{d}/spec_no_seeds.yaml", "--out", "{d}/s"], r"'seeds' is empty", ""),
    ("study-no-archs", ["study", "{d}/spec_no_archs.yaml", "--out", "{d}/s"], r"'archs' is empty", ""),
    ("study-str-epochs", ["study", "{d}/spec_str_epochs.yaml", "--out", "{d}/s"], r"'epochs' entries must be ints", ""),
    ("study-unknown-arm-key", ["study", "{d}/spec_unknown_arm_key.yaml", "--out", "{d}/s"], r"unknown key\(s\) bogus", ""),
    ("study-str-batch", ["study", "{d}/spec_str_batch.yaml", "--out", "{d}/s"], r"start_batch must be an integer", ""),
    ("study-shard-3/2", ["study", "{d}/spec.yaml", "--out", "{d}/s", "--shard", "3/2"], r"--shard 3/2: need", ""),
    ("study-shard--1/2", ["study", "{d}/spec.yaml", "--out", "{d}/s", "--shard", "-1/2"], r"--shard: expected one argument", ""),
    ("study-shard-a/b", ["study", "{d}/spec.yaml", "--out", "{d}/s", "--shard", "a/b"], r"--shard must look like i/n", ""),
    ("study-shard-0/0", ["study", "{d}/spec.yaml", "--out", "{d}/s", "--shard", "0/0"], r"--shard 0/0: need", ""),
    ("study-parallel-0", ["study", "{d}/spec.yaml", "--out", "{d}/s", "--parallel", "0"], r"--parallel must be >= 1", ""),
    ("study-time-limit-0", ["study", "{d}/spec.yaml", "--out", "{d}/s", "--time-limit", "0"], r"--time-limit must be > 0", ""),
    ("study-time-limit-nan", ["study", "{d}/spec.yaml", "--out", "{d}/s", "--time-limit", "nan"], r"--time-limit must be > 0", S),
    ("study-data", ["study", "{d}/spec.yaml", "--out", "{d}/s", "--data", "x"], r"--data must look like DATASET=PATH", ""),
    ("study-pack-only", ["study", "{d}/spec.yaml", "--out", "{d}/s", "--pack-only"], r"--pack-only needs --pack", ""),
    ("study-out-is-file", ["study", "{d}/spec.yaml", "--out", "{d}/afile"], r"--out .*afile is an existing file", C),
    ("study-train-command-quote", ["study", "{d}/spec.yaml", "--out", "{d}/s", "--train-command", "'abc"],
     r"No closing quotation", C),
    ("study-pack-folder", ["study", "{d}/spec.yaml", "--out", "{d}/s", "--pack-only", "--pack", "{d}/folder"],
     r"--pack archive .*folder is a folder, not a file", C),
    ("study-restore-missing", ["study", "{d}/spec.yaml", "--out", "{d}/s", "--restore", "{d}/absent.tar.gz"],
     r"absent\.tar\.gz: no such archive", ""),
    ("study-restore-garbage", ["study", "{d}/spec.yaml", "--out", "{d}/s", "--restore", "{d}/garbage.tar.gz"],
     r"garbage\.tar\.gz: not a readable \.tar\.gz archive", L),
    # --- report
    ("report-empty-dir", ["report", "{d}/reports/empty"], r"no runs found", ""),
    ("report-missing", ["report", "{d}/absent"], r"absent: no such folder or archive", ""),
    ("report-half-summary", ["report", "{d}/reports/half", "--no-figures"], r"half:.*summary\.json: not valid JSON", ""),
    ("report-epochs-str", ["report", "{d}/reports/epochs_str", "--no-figures"],
     r"config\.json: epochs must be an integer, got \"x\"", C),
    ("report-seed-str", ["report", "{d}/reports/seed_str", "--no-figures"], r"summary\.json: seed must be an integer", C),
    ("report-cooldown-str", ["report", "{d}/reports/cooldown_str", "--no-figures"], r"cooldown must be an integer", C),
    ("report-garbage-archive", ["report", "{d}/garbage.tar.gz"], r"not a readable \.tar\.gz archive", L),
    ("report-truncated-archive", ["report", "{d}/truncated.tar.gz"], r"not a readable \.tar\.gz archive", ""),
    ("report-window-0", ["report", "{d}/reports/half", "--window", "0"], r"--window must be in \[1, ", ""),
    ("report-window-huge", ["report", "{d}/reports/half", "--window", "9" * 20], r"--window must be in \[1, ", C),
    ("report-bench-binary", ["report", "{d}/reports/good", "--out", "{d}/r", "--bench", "{d}/garbage.bin"], r"not a UTF-8 text file", C),
    ("report-bench-mode-alone", ["report", "{d}/reports/empty", "--bench-mode", "graph"], r"--bench-mode .* give --bench", S),
    ("report-out-is-file", ["report", "{d}/reports/good", "--out", "{d}/afile", "--no-figures"],
     r"report folder .*afile is an existing file, not a folder", C),
    # --- the dispatcher
    ("no-such-command", ["frobnicate"], r"invalid choice: 'frobnicate'", ""),
]


@pytest.mark.parametrize(("argv", "message"), [
    pytest.param(c.values[1], c.values[2], id=c.values[0], marks=c.marks) if hasattr(c, "values")
    else pytest.param(c[1], c[2], id=c[0]) for c in CASES
])
def test_bad_input_gives_one_error_line_and_exit_2(argv, message, files, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(files))  # the user's model modules
    monkeypatch.chdir(files)  # nothing may land in the working directory either
    rc, _out, err = _run_cli([a.format(d=files) for a in argv], capsys)
    lines = err.splitlines()
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("deba"), lines[0]
    assert ": error: " in lines[0]
    assert re.search(message, lines[0]), lines[0]


def test_cases_have_unique_ids():
    ids = [c.values[0] if hasattr(c, "values") else c[0] for c in CASES]
    assert len(ids) == len(set(ids))


# --- what is already written stays as it was -------------------------------------------------------------
@pytest.mark.parametrize("extra", [
    pytest.param([], id="same-command-again-without-resume"),
    pytest.param(["--resume", "--lr", "0.5"], id="resume-with-another-config"),
    pytest.param(["--resume", "--window", "0"], id="resume-with-a-bad-option"),
    pytest.param(["--resume", "--model", f"{USER_MODULE}:wrong_input"], id="resume-with-a-broken-model"),
    pytest.param(["--resume", "--config", "{d}/garbage.yaml"], id="resume-with-a-binary-config"),
])
def test_failed_second_train_leaves_the_first_run_untouched(extra, finished_run, files, tmp_path, capsys,
                                                           monkeypatch):
    monkeypatch.syspath_prepend(str(files))
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _snapshot(run)
    argv = ["train", "--arch", "tiny_cnn", "--dataset", "synthetic", "--device", "cpu", "--quiet", "--epochs", "1",
            "--policy", "fixed", "--out", str(run), *[a.format(d=files) for a in extra]]
    rc, _out, err = _run_cli(argv, capsys)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert _snapshot(run) == before
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"


def test_resume_from_a_corrupt_checkpoint_leaves_it_for_the_user(files, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(files / "corrupt", run)
    before = _snapshot(run)
    rc, _out, err = _run_cli([*TRAIN, "--resume", "--out", str(run)], capsys)
    assert rc == 2 and "delete it to start the run afresh" in err
    assert _snapshot(run) == before


def test_replay_refuses_to_write_over_its_input_log(files, tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    shutil.copy(files / "good.jsonl", log)
    text = log.read_text()
    rc, _out, err = _run_cli(["replay", str(log), "--arch", "resnet18", "--out", str(log)], capsys)
    assert rc == 2 and "is the input log" in err and len(err.splitlines()) == 1
    assert log.read_text() == text


def test_calibrate_refuses_to_write_thresholds_over_an_input_log(files, tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    shutil.copy(files / "good.jsonl", log)
    text = log.read_text()
    rc, _out, err = _run_cli(["calibrate", str(files / "good.jsonl"), str(log), "--write-thresholds", str(log)],
                             capsys)
    assert rc == 2 and "is an input log" in err and len(err.splitlines()) == 1
    assert log.read_text() == text


def test_refused_pack_leaves_study_folder_and_no_temporary_file(files, tmp_path, capsys):
    out = tmp_path / "study"
    (out / "synthetic").mkdir(parents=True)
    before = _snapshot(out)
    target = tmp_path / "pack.tar.gz"
    target.mkdir()  # a folder where the archive should go
    rc, _out, err = _run_cli(["study", str(files / "spec.yaml"), "--out", str(out), "--pack-only", "--pack",
                              str(target)], capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pack.tar.gz", "study"]


def test_failed_atomic_write_raises_one_line_error_and_leaves_no_temporary_file(tmp_path):
    from deba.errors import DebaError

    target = tmp_path / "summary.json"
    target.mkdir()
    with pytest.raises(DebaError, match="summary.json: it is a folder") as info:
        write_json(target, {"x": 1})
    assert isinstance(info.value, OSError)  # code that handled a failed write as OSError still does
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_an_os_error_no_check_caught_is_still_one_line(files, capsys, monkeypatch):
    # e.g. a file that vanishes or loses its permissions between the check and the read
    def unreadable(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("deba.commands.replay.read_signal_log", unreadable)
    rc, _out, err = _run_cli(["replay", str(files / "good.jsonl"), "--arch", "resnet18"], capsys)
    assert rc == 2
    assert err == f"deba replay: error: {files / 'good.jsonl'}: Permission denied\n"


def test_train_config_accepts_path_objects_for_paths(tmp_path):
    from deba.training.config import TrainConfig

    config = TrainConfig(arch="tiny_cnn", dataset="synthetic", out=tmp_path / "run")
    assert config.out == str(tmp_path / "run")  # stored as the string config.json will hold


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
