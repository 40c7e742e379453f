"""scripts/gpu_check.py (behind scripts/gpu_check.sh) on the CPU: the files a quick run writes, what `deba report`
reads of them, the deadline (a step stopped, the rest skipped), the eager fallback after a failed graph check,
and the modelled times."""
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")


def _files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}


def test_quick_run_writes_what_report_reads(tmp_path):
    out = tmp_path / "out"
    work_before = set((ROOT / "runs" / "gpu-check").glob("work-*"))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), "--device", "cpu", "--quick", "--budget-s", "240",
                           "--skip", "env", "check", "oom"], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.monotonic() - t0 < 240
    files = _files(out)
    assert files == {"results.json", "summary.md", "log.txt", "bench.json", "solo/config.json", "solo/epochs.jsonl",
                     "solo/summary.json"}
    assert len(files) <= 8 and all(f.count("/") <= 1 for f in files)
    res = json.loads((out / "results.json").read_text())
    steps = res["steps"]
    assert steps["env"]["status"] == steps["check"]["status"] == steps["oom"]["status"] == "skipped"
    assert steps["bench"]["status"] == "done" and steps["bench"]["records"] == 2
    solo = steps["solo"]
    assert solo["status"] == "done" and solo["epochs_completed"] == 2 and solo["run_status"] == "complete"
    summary = (out / "summary.md").read_text()
    assert "| solo | done |" in summary and "## 3. Solo run" in summary and "## 2. Speed" in summary
    assert set((ROOT / "runs" / "gpu-check").glob("work-*")) == work_before  # its work folder went away
    # what `deba report` reads: the bench records, and the run folder
    from deba.report import BenchTable, load_runs

    table = BenchTable.load(out / "bench.json")
    assert table.modes("tiny_cnn") == ["eager"] and set(table.step_s[("tiny_cnn", "eager")]) == {8, 16}
    runs = load_runs([out])
    assert len(runs.runs) == 1 and runs.runs[0].arch == "tiny_cnn"


def test_oom_step_survives_a_simulated_out_of_memory_error(gc, tmp_path, monkeypatch):
    """The oom step's child in this process (the error simulated above 32 samples: no memory cap on a CPU),
    and how the step reads the run it leaves."""
    from deba.training import step as step_mod

    monkeypatch.setattr(step_mod.EagerStep, "_eager_step", step_mod.EagerStep._eager_step)  # undone afterwards

    def in_process(cmd, timeout_s, work, env):
        i = cmd.index("--child")
        rc = gc.main(cmd[i:])
        return rc, "", 0.1

    monkeypatch.setattr(gc, "run_child", in_process)
    out = tmp_path / "out"
    out.mkdir()
    plan = gc.Plan(gc.parse_args([str(out), "--quick", "--device", "cpu"]))
    res = gc.Results(out, 300, plan)
    gc.step_oom(res, plan, tmp_path, {}, 100, gib=4)
    oom = res.data["steps"]["oom"]
    assert oom["exit_code"] == 0 and oom["run_status"] == "complete" and oom["verdict"] == "PASS", oom
    assert oom["simulated"] and oom["b_max_cap"] == 16 and oom["batch_sizes"] == [16, 16, 16]
    assert oom["events"] == ["out of memory at batch size 64; B_max capped at 16, continuing the epoch at batch size 16"]
    assert "- verdict: PASS" in (out / "summary.md").read_text()


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit is reaped by whatever PID 1 is, maybe never)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


FAKE_TRAIN = """
import json, os, subprocess, sys, time
out = sys.argv[sys.argv.index("--out") + 1]
os.makedirs(out, exist_ok=True)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(os.path.join(out, "..", "grandchild.pid"), "w").write(str(child.pid))
recs = []
for epoch in range(1, 1000):
    time.sleep(0.3)
    recs.append({"epoch": epoch, "batch_size": 64, "steps": 10, "batch_steps": [[64, 10]]})
    open(os.path.join(out, "epochs.jsonl"), "w").write("".join(json.dumps(r) + "\\n" for r in recs))
    json.dump({"status": "running", "epochs_completed": epoch, "graphs": "eager", "train_time_s": 0.3 * epoch,
               "batch_sizes": [64] * epoch}, open(os.path.join(out, "summary.json"), "w"))
"""


def test_a_step_past_the_deadline_is_stopped_with_what_it_measured(gc, tmp_path, monkeypatch):
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    monkeypatch.setattr(gc, "_deba", lambda: [sys.executable, str(fake)])
    out = tmp_path / "out"
    t0 = time.monotonic()
    rc = gc.main([str(out), "--device", "cpu", "--quick", "--budget-s", "6", "--solo-epochs", "1000",
                  "--skip", "env", "check", "bench", "oom"])
    elapsed = time.monotonic() - t0
    assert rc == 0 and elapsed < 6 + 3  # the deadline, plus the stop's grace
    solo = json.loads((out / "results.json").read_text())["steps"]["solo"]
    assert solo["status"] == "cut" and solo["exit_code"] is None and solo["epochs_completed"] >= 1
    assert solo["note"] == f"stopped at the deadline after {solo['epochs_completed']} of 1000 epochs"
    assert "stopped at the deadline" in (out / "summary.md").read_text()
    pid = int((out / "grandchild.pid").read_text())  # the step's own children were stopped too
    time.sleep(0.2)
    assert not _running(pid)
    (out / "grandchild.pid").unlink()


def test_steps_without_enough_time_are_skipped_and_said_so(gc, tmp_path):
    out = tmp_path / "out"
    assert gc.main([str(out), "--device", "cpu", "--quick", "--budget-s", "2.5"]) == 0
    res = json.loads((out / "results.json").read_text())
    for name in ("env", "check", "bench", "oom", "solo"):
        step = res["steps"][name]
        assert step["status"] == "skipped" and step["reason"].endswith("s left, needs " + str(gc.Plan(
            gc.parse_args(["x", "--quick"])).times[name][0]) + " s"), (name, step)
    assert _files(out) == {"results.json", "summary.md"}
    assert "| solo | skipped |" in (out / "summary.md").read_text()


def test_budget_for_a_step(gc):
    plan = gc.Plan(gc.parse_args(["x"]))
    res = gc.Results.__new__(gc.Results)
    for left, name, expected in ((400, "check", 110), (100, "check", 98), (41.5, "check", None), (300, "solo", 298),
                                 (46, "solo", None), (48, "solo", 46)):
        res.deadline = time.monotonic() + left
        got = gc.budget_for(res, name, plan)
        assert (got is None) if expected is None else got == pytest.approx(expected, abs=0.1), (left, name, got)


def test_a_failed_graph_check_turns_graphs_off_for_bench_and_training(gc, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    plan = gc.Plan(gc.parse_args([str(out)]))
    res = gc.Results(out, 300, plan)
    commands = []

    def fake_run(cmd, timeout_s, work, env):
        commands.append(cmd)
        if "--child" in cmd:
            checks = [{"arch": "resnet18", "dropout": "off", "signals_mode": "last", "ok": False,
                       "error": "DebaError: CUDA graphs: capturing the step at batch size 64 failed (boom)"},
                      {"arch": "mobilenet_v3_large", "dropout": "on", "signals_mode": "last", "ok": False,
                       "error": None, "max_rel": {"loss": 0.5}},
                      {"arch": "densenet121", "dropout": "off", "signals_mode": "last", "ok": True, "error": None}]
            probes = [{"mode": "thread_local", "ok": True, "step_mode": "graph", "pinned_allocations": 40,
                       "thread_errors": 0, "first_thread_error": None, "error": None},
                      {"mode": "global", "ok": False, "step_mode": "eager", "pinned_allocations": 3,
                       "thread_errors": 2, "first_thread_error": "RuntimeError: operation not permitted when "
                       "stream is capturing", "error": None}]
            (out / "check.json").write_text(json.dumps({"checks": checks, "ok": False, "pinning_thread": probes,
                                                        "unavailable": {"gpt": "not on this checkout"}}))
        return 0, "", 0.1

    monkeypatch.setattr(gc, "run_child", fake_run)
    gc.step_check(res, plan, tmp_path, {}, 100)
    assert res.data["graphs_off"] == {
        "resnet18": "DebaError: CUDA graphs: capturing the step at batch size 64 failed (boom)",
        "mobilenet_v3_large": "graph vs eager mismatch (dropout on, signals last)"}
    gc.step_bench(res, plan, tmp_path, {}, 100)
    bench_cmds = [c for c in commands if "bench" in c]
    assert bench_cmds[0][bench_cmds[0].index("--modes") + 1] == "eager"  # resnet18 alone: eager only
    assert bench_cmds[1][bench_cmds[1].index("--modes") + 1] == "eager,graph"  # densenet121's graph still wanted
    gc.step_solo(res, plan, tmp_path, {}, 100)
    train = [c for c in commands if "train" in c][0]
    assert train[train.index("--graphs") + 1] == "off"
    summary = (out / "summary.md").read_text()
    assert "- resnet18: DebaError: CUDA graphs: capturing" in summary and "| gpt | - | - | not checked" in summary
    assert "capture_error_mode thread_local: ok (step mode graph, 40 pinned allocations, 0 thread errors)" in summary
    assert "capture_error_mode global: FAILED (step mode eager, 3 pinned allocations, 2 thread errors, first: " \
           "RuntimeError: operation not permitted" in summary


def test_check_child_on_cpu_records_the_failed_capture_and_what_it_cannot_build(gc, tmp_path):
    out = tmp_path / "check.json"
    assert gc.main(["--child", "check", "--device", "cpu", "--out", str(out), "--archs", "tiny_mlp", "gpt-nope",
                    "--batch-sizes", "8", "--steps", "1"]) == 0
    data = json.loads(out.read_text())
    assert data["schema_version"] == 1 and not data["ok"]
    assert [(c["arch"], c["dropout"], c["signals_mode"]) for c in data["checks"]] == [
        ("tiny_mlp", "off", "last"), ("tiny_mlp", "off", "epoch-avg"), ("tiny_mlp", "on", "last")]
    assert data["checks"][0]["error"].startswith("DebaError: CUDA graphs: capturing the step at batch size 8")
    assert data["unavailable"] == {"gpt-nope": "deba.models cannot build 'gpt-nope' on this checkout"}
    assert [p["mode"] for p in data["pinning_thread"]] == ["thread_local", "global"]
    assert all(p["skipped"].startswith("needs CUDA") for p in data["pinning_thread"])


def test_modelled_times(gc, tmp_path):
    plan = gc.Plan(gc.parse_args(["x"]))
    records = [{"arch": "resnet18", "batch_size": b, "mode": "graph", "epoch_s": t * (50_000 // b), "steps": 50_000 // b}
               for b, t in ((64, 0.002), (256, 0.004))]
    records.append({"arch": "resnet18", "batch_size": 64, "mode": "eager", "epoch_s": 5.0, "steps": 781})
    (tmp_path / "bench.json").write_text(json.dumps({"records": records}))
    epochs = [{"epoch": 1, "batch_size": 64, "steps": 781, "batch_steps": [[64, 781]]},
              {"epoch": 2, "batch_size": 128, "steps": 390, "batch_steps": [[128, 390]]}]
    (tmp_path / "epochs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    got = gc.model_solo(tmp_path / "bench.json", tmp_path / "epochs.jsonl", plan,
                        {"graphs": "graph", "status": "complete", "train_time_s": 100.0})
    assert got["fixed64_modelled_s"] == pytest.approx(0.002 * 781 * 100)
    t128 = math.sqrt(0.002 * 0.004)  # halfway between 64 and 256 in log space
    assert got["deba_modelled_s"] == pytest.approx(0.002 * 781 + t128 * 390)
    assert got["speedup_vs_fixed64_modelled"] == pytest.approx(1 - 100.0 / (0.002 * 781 * 100))
    # a batch size outside the measured ones: no model of the run, said by its absence
    epochs.append({"epoch": 3, "batch_size": 512, "steps": 97})
    (tmp_path / "epochs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    got = gc.model_solo(tmp_path / "bench.json", tmp_path / "epochs.jsonl", plan, {"graphs": "graph"})
    assert "deba_modelled_s" not in got and "fixed64_modelled_s" in got


@pytest.mark.parametrize("argv, text", [(["{out}"], "no such file"), (["{full}", "--quick"], "not an empty folder"),
                                        ([], "OUTDIR is required"),
                                        (["{out}", "--quick", "--budget-s", "0"], "--budget-s must be > 0"),
                                        (["{out}", "--quick", "--solo-epochs", "0"], "--solo-epochs must be >= 1"),
                                        (["{out}", "--quick", "--oom-gib", "-1"], "--oom-gib must be > 0")])
def test_bad_input_one_line_exit_2(gc, tmp_path, capsys, argv, text):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    argv = [a.format(out=tmp_path / "new", full=full) for a in argv]
    if argv and argv[0].endswith("new") and "--quick" not in argv:
        argv += ["--data", str(tmp_path / "missing.npz")]
    assert gc.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and text in err


def test_shell_wrapper_needs_outdir():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: bash scripts/gpu_check.sh OUTDIR")


def test_unknown_option_one_line_exit_2(gc, capsys):
    with pytest.raises(SystemExit) as info:
        gc.main(["out", "--budget", "x"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and err.startswith("gpu_check: error: ")
