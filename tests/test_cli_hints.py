"""What the commands tell a new user (issue 11, items 6, 7, 9, 10, 12, 13): the next command printed by
`deba calibrate` works as printed, the README's Python entry point exists, huge integers in a log are one
error line, Python callers read Python argument names, `deba demo` explains itself, every --help lists the
values an option takes."""
from __future__ import annotations

import json
import re
import shlex

import pytest

from deba.cli import build_parser, main
from deba.errors import DebaError


def _log(path, n=8):
    path.write_text("".join(json.dumps({"epoch": e, "grad_var": 1.0 + 0.3 * e, "grad_norm": 2.0 - 0.1 * e,
                                        "loss": 3.0 / e}) + "\n" for e in range(1, n + 1)))
    return path


# --- item 6 --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("conf,preset", [(None, "paper"), ("ratio", "paper"), ("bounded", "paper-bounded")])
def test_calibrate_prints_a_train_command_that_works_as_printed(conf, preset, tmp_path, capsys):
    from deba.commands.train import config_from_args
    from deba.training.build import build_policy, policy_arch_name

    log, th = _log(tmp_path / "fixed log.jsonl"), tmp_path / "th.json"
    args = ["calibrate", str(log), "--write-thresholds", str(th), "--arch", "resnet18"]
    assert main(args + (["--conf", conf] if conf else [])) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("thresholds written")][0]
    printed = re.search(r"\(use: (deba train .*)\)$", line).group(1)
    words = shlex.split(printed)
    assert words[:2] == ["deba", "train"] and ["--preset", preset] == words[words.index("--preset"):][:2]
    parsed = build_parser().parse_args(words[1:])  # exactly the printed words
    config = config_from_args(parsed)
    policy = build_policy(config, policy_arch_name(config), 50_000)  # the conf reading matches: no refusal
    assert policy.config.conf_mode == (conf or "ratio") and policy.config.theta_stab == pytest.approx(
        json.loads(th.read_text())["theta_stab"])


# --- item 7 --------------------------------------------------------------------------------------------

def test_the_readme_python_entry_point_exists_as_written():
    import deba.training
    from deba.training.trainer import train

    assert deba.training.train is train and deba.training.TrainConfig.__name__ == "TrainConfig"
    import inspect

    params = inspect.signature(deba.training.train).parameters
    assert {"train_dataset", "test_dataset", "num_classes"} <= set(params)


# --- item 9 --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["replay", "calibrate"])
def test_an_integer_too_large_for_a_float_is_one_line_exit_2(command, tmp_path, capsys):
    log = _log(tmp_path / "log.jsonl")
    lines = log.read_text().splitlines()
    lines[2] = '{"epoch": 3, "grad_var": 1' + "0" * 400 + ', "grad_norm": 1.0, "loss": 1.0}'
    log.write_text("\n".join(lines) + "\n")
    argv = [command, str(log)] + (["--arch", "resnet18"] if command == "replay" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0] == f"deba {command}: error: {log}:3: field 'grad_var' is an integer too large for a float (401 digits)"


# --- item 10 -------------------------------------------------------------------------------------------

def test_python_callers_read_python_names_and_the_cli_reads_flags(capsys):
    from deba.data import load_dataset
    from deba.policy import make_deba
    from deba.training.config import TrainConfig

    with pytest.raises(ValueError, match=r"\(or give theta_stab and theta_conf\)$"):
        make_deba("paper", arch="my_net")
    with pytest.raises(DebaError, match=r"^subset must be a positive integer"):
        load_dataset("synthetic", subset=0)
    with pytest.raises(DebaError, match="do not pass data with it"):
        load_dataset("synthetic", data="x")
    with pytest.raises(DebaError, match=r"^b_min \(9\) must not exceed b_max \(8\)$"):
        TrainConfig(b_min=9, b_max=8)
    assert main(["train", "--dataset", "synthetic", "--data", "x", "--epochs", "1", "--quiet", "--device", "cpu"]) == 2
    assert "do not pass --data with it" in capsys.readouterr().err
    assert main(["replay", "x.jsonl", "--arch", "my_net"]) == 2
    assert "(or give --theta-stab and --theta-conf)" in capsys.readouterr().err


# --- item 12 -------------------------------------------------------------------------------------------

def test_demo_shows_progress_thresholds_and_why_no_speed_claim_and_trained_sizes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--epochs", "3", "--out", str(out), "--no-plot"]) == 0
    text = capsys.readouterr().out
    assert text.count("    epoch 1/3: batch 32") == 2 and "    epoch 3/3" in text  # both runs, as they train
    assert re.search(r"theta_stab \S+: calibrated, the 75th percentile of dnorm", text)
    assert "theta_conf 0.6: resnet18's Table 1 value" in text
    assert "no speed claim" in text
    summary = json.loads((out / "deba" / "summary.json").read_text())
    trained = summary["batch_sizes"]
    line = [x for x in text.splitlines() if x.strip().startswith("DEBA: final acc")][0]
    shown = [int(b) for b in line.split("batch ")[1].split(" -> ")]
    assert shown[-1] == trained[-1] and set(shown) <= set(trained)  # the decision after the end is not a size


def test_demo_plot_ticks_the_batch_sizes_used():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deba.commands.demo import batch_axis

    fig, ax = plt.subplots()
    ax.step([1, 2, 3, 4], [32, 48, 72, 72])
    batch_axis(ax, [32, 32, 48, 72, 72])
    fig.canvas.draw()
    assert list(ax.get_yticks()) == [32, 48, 72]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["32", "48", "72"]
    assert len(ax.yaxis.get_minor_locator()()) == 0
    plt.close(fig)


# --- item 13 -------------------------------------------------------------------------------------------

def _help(command, whole=False):
    parser = build_parser()
    text = parser._subparsers._group_actions[0].choices[command].format_help()
    return " ".join((text if whole else text[text.index("options:"):]).split())  # options, not the usage line


@pytest.mark.parametrize("option,values", [
    ("--lr-schedule", "constant, cosine"), ("--signals-mode", "last, epoch-avg"), ("--amp", "none, bf16"),
    ("--device", "auto, cpu, cuda, cuda:N"), ("--lr-scaling", "none, linear, sqrt"),
    ("--policy", "fixed (one batch size"), ("--graphs", "auto, on, off")])
def test_train_help_lists_the_allowed_values(option, values):
    text = _help("train")
    at = text.index(option + " ")
    assert values in text[at:at + 600], text[at:at + 600]


def test_train_help_lists_every_model_including_tiny_mlp():
    from deba.models import MODEL_NAMES

    text = _help("train")
    at = text.index("--arch ARCH ")
    assert "tiny_mlp" in MODEL_NAMES and all(name in text[at:at + 600] for name in MODEL_NAMES)


def test_bench_help_has_no_stray_percent_and_overhead_below_zero_is_noise():
    text = _help("bench", whole=True)
    assert "%%" not in text and "as % of the epoch" in text
    from deba.bench import markdown, overhead_text

    assert overhead_text(-82.0) == "overhead below timing noise (-82.00% measured)"
    assert overhead_text(3.5) == "+3.50% of epoch"
    result = {"machine": {"device_name": "cpu", "torch_version": "x"},
              "settings": {"amp": "none", "channels_last": False, "steps": 1, "warmup": 0, "epoch_samples": 10},
              "records": [{"arch": "a", "batch_size": 8, "mode": "eager", "step_ms": 1.0, "epoch_s": 1.0,
                           "images_per_s": 10.0}],
              "overhead": [{"arch": "a", "batch_size": 8, "mode": "eager", "overhead_pct": -82.0}]}
    assert "| noise (-82.00) |" in markdown(result) and "-82.00 |" not in markdown(result).replace("(-82.00)", "")


@pytest.mark.parametrize("command", ["demo", "bench", "train", "profile", "calibrate"])
def test_every_device_option_lists_its_values(command):
    text = _help(command)
    if "--device" in text:
        at = text.index("--device ")
        assert "cpu" in text[at:at + 300] and "cuda" in text[at:at + 300], (command, text[at:at + 300])
