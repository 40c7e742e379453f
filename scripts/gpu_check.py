#!/usr/bin/env python3
"""The one GPU check: `bash scripts/gpu_check.sh OUTDIR` (this file is what it runs). See docs/gpu-runbook.md.

Steps, each in its own process, in this order (the environment first: it is cheap and every number needs it):

    env    GPU, driver, torch, torchvision, CUDA, cuDNN                                    -> results.json
    check  graph vs eager numerics (deba.graph_check): resnet18, mobilenet_v3_large, and
           gpt where deba.models can build it; dropout off and on                           -> check.json
    bench  `deba bench`: step and epoch time per batch size, eager and graph, signals
           overhead (resnet18 at B 64..2048; mobilenet_v3_large, densenet121 at 64 256 1024) -> bench.json
    oom    a real out-of-memory at a grown batch, survived: resnet18 step-grow 1024 -> 4096
           -> 16384 on a 20,000-image subset, the process capped at --oom-gib GiB           -> results.json
    solo   resnet18, CIFAR-10, 100 epochs, the default policy (DEBA paper-bounded), seed 42,
           alone on the GPU; cut at the deadline if it does not fit (the epochs done are
           stated); fixed B=64's time modelled from bench as 100 x its epoch time          -> solo/

The whole run ends by itself before --budget-s (default 450 s) from its start: a step that has less than its
minimum time left is skipped, a running one is stopped at the deadline. results.json (everything, machine
readable) and summary.md (the same for people) are rewritten after every step, so a run cut off still returns
what it measured. log.txt holds the tail of every step's output. At most 8 files: those, check.json,
bench.json and solo/{config.json,epochs.jsonl,summary.json} (what `deba report` reads; no checkpoint).

An architecture whose graph check failed (capture error or mismatch) is benchmarked and trained eagerly, and
results.json says why ("graphs_off"). `--device cpu --quick` runs every step on tiny settings (tiny_cnn,
generated data, a simulated out-of-memory error): what the tests run.

Only the standard library is imported here; the child modes (`--child env|check|oom`) import torch and deba.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_VERSION = 1
LOG_TAIL_BYTES = 40_000  # per step, in log.txt
TARGETS_MS = {"resnet18": 2.0, "densenet121": 9.0, "mobilenet_v3_large": 4.0}  # graph step at B=64
OVERHEAD_TARGET_PCT = 1.0
SOLO_EPOCHS = 100
FINAL_WRITE_S = 2.0  # kept back from every step for the last write of the results


class Plan:
    """Settings of one run: the GPU plan, or the tiny CPU plan of --quick."""

    def __init__(self, args: argparse.Namespace):
        quick = args.quick
        self.device = args.device
        self.quick = quick
        self.check_archs = ["tiny_cnn", "gpt"] if quick else ["resnet18", "mobilenet_v3_large", "gpt"]
        self.check_sizes = [8, 16] if quick else [64, 256]
        self.check_steps = 1 if quick else 3
        main = "tiny_cnn" if quick else "resnet18"
        self.main_arch = main
        self.bench_parts = ([([main], [8, 16])] if quick else
                            [([main], [64, 128, 256, 512, 1024, 2048]),
                             (["mobilenet_v3_large", "densenet121"], [64, 256, 1024])])
        self.bench_flags = (["--steps", "2", "--warmup", "1", "--epoch-samples", "1000"] if quick else
                            ["--steps", "30", "--warmup", "5"])
        data = ["--dataset", "synthetic", "--subset", "256"] if quick else ["--data", str(args.data)]
        policy_opts = ["--theta-stab", "0.5", "--theta-conf", "0.6"] if quick else []  # tiny_cnn has no Table 1 row
        self.solo_epochs = args.solo_epochs or (2 if quick else SOLO_EPOCHS)
        self.solo_args = ["--arch", main, *data, "--policy", "deba", *policy_opts, "--epochs", str(self.solo_epochs),
                          "--seed", "42", "--checkpoint-every", "0", "--quiet", "--device", self.device]
        oom_data = ["--dataset", "synthetic", "--subset", "512"] if quick else [
            "--data", str(args.data), "--subset", "20000"]
        start, top = (16, 256) if quick else (1024, 16384)
        self.oom_args = ["--arch", main, *oom_data, "--policy", "step-grow", "--start-batch", str(start),
                         "--milestones", "1", "2", "--grow-factor", "4", "--b-max", str(top), "--epochs", "3",
                         "--seed", "0", "--checkpoint-every", "0", "--quiet", "--device", self.device]
        self.oom_simulate_above = 32 if quick else None  # no memory cap on the CPU: the error is simulated
        # (minimum seconds to start, most seconds to spend); solo takes whatever is left
        self.times = ({"env": (1, 30), "check": (3, 60), "bench": (3, 60), "oom": (3, 60), "solo": (3, None)}
                      if quick else
                      {"env": (5, 30), "check": (40, 110), "bench": (40, 150), "oom": (30, 70), "solo": (45, None)})


# --- results ----------------------------------------------------------------------------------------------
class Results:
    """results.json, summary.md and log.txt in OUTDIR, rewritten (atomically) after every step."""

    def __init__(self, out: Path, budget_s: float, plan: Plan):
        self.out = out
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget_s
        self.data = {"schema_version": SCHEMA_VERSION, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "budget_s": budget_s, "device": plan.device, "quick": plan.quick, "steps": {},
                     "graphs_off": {}, "notes": []}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def step(self, name: str, **fields) -> None:
        self.data["steps"].setdefault(name, {}).update(fields)
        self.save()

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        _atomic_write(self.out / "results.json", json.dumps(self.data, indent=2, default=str) + "\n")
        try:
            text = render_summary(self.data)
        except Exception as e:  # noqa: BLE001 - results.json holds everything; the page must not stop the run
            text = f"# deba GPU check\n\nsummary.md could not be rendered ({type(e).__name__}: {e}); see results.json\n"
        _atomic_write(self.out / "summary.md", text)

    def log(self, name: str, text: str) -> None:
        with open(self.out / "log.txt", "a", encoding="utf-8") as f:
            f.write(f"===== {name} ({time.strftime('%H:%M:%S')}) =====\n{text}\n")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --- running a step ---------------------------------------------------------------------------------------
def run_child(cmd: list[str], timeout_s: float, work: Path, env: dict) -> tuple[int | None, str, float]:
    """(exit code or None when stopped at its time limit, output tail, seconds). The child runs in its own
    process group: a stop ends everything it started (SIGTERM, then SIGKILL 5 s later)."""
    t0 = time.monotonic()
    out_path = work / "child-output.txt"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
        _RUNNING["proc"] = proc
        try:
            rc: int | None = proc.wait(timeout=max(0.1, timeout_s))
        except subprocess.TimeoutExpired:
            rc = None
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break
    data = out_path.read_bytes()[-LOG_TAIL_BYTES:]
    return rc, data.decode("utf-8", "replace"), time.monotonic() - t0


def budget_for(res: Results, name: str, plan: Plan) -> float | None:
    """Seconds the step may use, or None to skip it (less than its minimum left before the deadline)."""
    least, most = plan.times[name]
    left = res.left() - FINAL_WRITE_S
    if left < least:
        return None
    return left if most is None else min(most, left)


def _py() -> list[str]:
    return [sys.executable]


def _deba() -> list[str]:
    return [sys.executable, "-m", "deba"]


# --- the steps --------------------------------------------------------------------------------------------
def step_env(res: Results, plan: Plan, work: Path, env: dict, limit: float) -> None:
    rc, text, secs = run_child(_py() + [__file__, "--child", "env", "--device", plan.device], limit, work, env)
    res.log("env", text)
    info = None
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            info = json.loads(line)
            break
    res.data["env"] = info
    res.step("env", status="done" if rc == 0 and info else "failed", seconds=round(secs, 1), exit_code=rc)


def step_check(res: Results, plan: Plan, work: Path, env: dict, limit: float) -> None:
    out = res.out / "check.json"
    cmd = _py() + [__file__, "--child", "check", "--device", plan.device, "--out", str(out),
                   "--archs", *plan.check_archs, "--batch-sizes", *map(str, plan.check_sizes),
                   "--steps", str(plan.check_steps)]
    rc, text, secs = run_child(cmd, limit, work, env)
    res.log("check", text)
    data = _read_json(out) or {}
    for c in data.get("checks", []):
        if c.get("ok") or c.get("arch") in res.data["graphs_off"]:
            continue
        why = c.get("error") or f"graph vs eager mismatch (dropout {c.get('dropout')}, signals {c.get('signals_mode')})"
        res.data["graphs_off"][c["arch"]] = why
    status = "done" if rc == 0 else ("cut" if rc is None else "failed")
    res.step("check", status=status, seconds=round(secs, 1), exit_code=rc, ok=data.get("ok"),
             checks=[_check_line(c) for c in data.get("checks", [])], unavailable=data.get("unavailable", {}),
             pinning_thread=data.get("pinning_thread"))


def _check_line(c: dict) -> dict:
    keep = ("arch", "dropout", "signals_mode", "ok", "error", "skipped", "comparison", "graph_step_mode")
    line = {k: c.get(k) for k in keep}
    values = [v for v in (c.get("max_rel") or {}).values() if isinstance(v, (int, float))]
    line["largest_rel_diff"] = max(values) if values else None
    return line


def step_bench(res: Results, plan: Plan, work: Path, env: dict, limit: float) -> None:
    out = res.out / "bench.json"
    end = time.monotonic() + limit
    parts, status, secs_total = [], "done", 0.0
    for archs, sizes in plan.bench_parts:
        left = end - time.monotonic()
        if left < 5:
            status = "cut"
            res.data["notes"].append(f"bench: no time left for {', '.join(archs)}")
            break
        part = work / f"bench-{len(parts)}.json"
        for arch in archs:
            if arch in res.data["graphs_off"]:
                res.data["notes"].append(f"bench {arch}: eager only ({res.data['graphs_off'][arch]})")
        modes = "eager" if all(a in res.data["graphs_off"] for a in archs) else "eager,graph"
        cmd = _deba() + ["bench", "--arch", *archs, "--batch-sizes", *map(str, sizes), "--modes", modes,
                         "--device", plan.device, *plan.bench_flags, "--out", str(part)]
        rc, text, secs = run_child(cmd, left, work, env)
        secs_total += secs
        res.log(f"bench {' '.join(archs)}", text)
        data = _read_json(part)
        if data:
            # a graph timing of an architecture whose graph check failed means nothing: drop it
            data["records"] = [r for r in data["records"]
                               if not (r["mode"] == "graph" and r["arch"] in res.data["graphs_off"])]
            data["overhead"] = [o for o in data["overhead"]
                                if not (o["mode"] == "graph" and o["arch"] in res.data["graphs_off"])]
            parts.append(data)
            _atomic_write(out, json.dumps(merge_bench(parts), indent=2) + "\n")
        if rc != 0:
            status = "cut" if rc is None else "failed"
            break
    merged = merge_bench(parts) if parts else None
    res.step("bench", status=status, seconds=round(secs_total, 1), records=len(merged["records"]) if merged else 0,
             targets=bench_targets(merged) if merged else None)


def merge_bench(parts: list[dict]) -> dict:
    """One `deba bench --out` object from several: records, overhead and notes concatenated."""
    merged = dict(parts[0])
    merged["records"] = [r for p in parts for r in p["records"]]
    merged["overhead"] = [o for p in parts for o in p.get("overhead", [])]
    merged["notes"] = [n for p in parts for n in p.get("notes", [])]
    merged["settings_by_part"] = [p["settings"] for p in parts]
    return merged


def bench_targets(bench: dict) -> list[dict]:
    rec = {(r["arch"], r["batch_size"], r["mode"]): r for r in bench["records"]}
    rows = []
    for arch, limit in TARGETS_MS.items():
        r = rec.get((arch, 64, "graph"))
        eager = rec.get((arch, 64, "eager"))
        rows.append({"target": f"{arch} B=64 graph step <= {limit} ms", "measured_ms": r and r["step_ms"],
                     "eager_ms": eager and eager["step_ms"], "pass": None if r is None else r["step_ms"] <= limit})
    over = [o for o in bench.get("overhead", []) if o["mode"] == "graph"] or bench.get("overhead", [])
    worst = max(over, key=lambda o: o["overhead_pct"], default=None)
    rows.append({"target": f"signals overhead <= {OVERHEAD_TARGET_PCT}% of the epoch (worst record)",
                 "measured_pct": worst and worst["overhead_pct"],
                 "where": worst and f"{worst['arch']} B={worst['batch_size']} {worst['mode']}",
                 "pass": None if worst is None else worst["overhead_pct"] <= OVERHEAD_TARGET_PCT})
    return rows


def step_oom(res: Results, plan: Plan, work: Path, env: dict, limit: float, gib: float) -> None:
    run_dir = work / "oom-run"
    _remove_tree(run_dir)
    cmd = _py() + [__file__, "--child", "oom", "--device", plan.device, "--oom-gib", str(gib)]
    if plan.oom_simulate_above:
        cmd += ["--simulate-oom-above", str(plan.oom_simulate_above)]
    cmd += ["--", *plan.oom_args, "--out", str(run_dir)]
    rc, text, secs = run_child(cmd, limit, work, env)
    res.log("oom", text)
    summary = _read_json(run_dir / "summary.json") or {}
    events = [e.get("event", "") for e in summary.get("events", [])]
    oom = [e for e in events if "out of memory" in e]
    survived = rc == 0 and bool(oom) and summary.get("status") == "complete"
    verdict = "PASS" if survived else ("no out-of-memory happened: lower --oom-gib" if rc == 0 and not oom else "FAIL")
    res.step("oom", status="done" if rc == 0 else ("cut" if rc is None else "failed"), seconds=round(secs, 1),
             exit_code=rc, simulated=bool(plan.oom_simulate_above), memory_cap_gib=None if plan.quick else gib,
             batch_sizes=summary.get("batch_sizes"), b_max_cap=summary.get("b_max_cap"),
             graphs=summary.get("graphs"), run_status=summary.get("status"), events=events, verdict=verdict)


def step_solo(res: Results, plan: Plan, work: Path, env: dict, limit: float) -> None:
    run_dir = res.out / "solo"
    _remove_tree(run_dir)
    graphs = "off" if plan.main_arch in res.data["graphs_off"] else "auto"
    cmd = _deba() + ["train", *plan.solo_args, "--graphs", graphs, "--out", str(run_dir)]
    rc, text, secs = run_child(cmd, limit, work, env)
    res.log("solo", text)
    summary = _read_json(run_dir / "summary.json") or {}
    done = summary.get("epochs_completed") or 0
    fields = {"status": "done" if rc == 0 else ("cut" if rc is None else "failed"), "seconds": round(secs, 1),
              "exit_code": rc, "graphs_requested": graphs, "graphs": summary.get("graphs"),
              "epochs_planned": plan.solo_epochs, "epochs_completed": done, "run_status": summary.get("status"),
              "train_time_s": summary.get("train_time_s"), "eval_time_s": summary.get("eval_time_s"),
              "final_test_acc": summary.get("final_test_acc"), "best_test_acc": summary.get("best_test_acc"),
              "best_epoch": summary.get("best_epoch"), "batch_sizes": summary.get("batch_sizes"),
              "increases": summary.get("increases"), "rollbacks": summary.get("rollbacks")}
    if rc is None:
        fields["note"] = f"stopped at the deadline after {done} of {plan.solo_epochs} epochs"
    fields.update(model_solo(res.out / "bench.json", run_dir / "epochs.jsonl", plan, summary))
    res.step("solo", **fields)


def model_solo(bench_path: Path, epochs_path: Path, plan: Plan, summary: dict) -> dict:
    """Fixed B=64's modelled time (bench epoch time x the planned epochs), and the DEBA run's own time
    modelled the same way over the epochs it trained (log-log interpolation between measured batch sizes)."""
    bench = _read_json(bench_path)
    if not bench:
        return {"modelled": "no bench.json: nothing to model from"}
    mode = summary.get("graphs") or "graph"
    pts = {r["batch_size"]: r["epoch_s"] / r["steps"] for r in bench["records"]
           if r["arch"] == plan.main_arch and r["mode"] == mode and r.get("steps")}
    out: dict = {"modelled_mode": mode}
    if 64 in pts and not plan.quick:  # CIFAR-10: 50,000 // 64 steps an epoch
        out["fixed64_modelled_s"] = pts[64] * (50_000 // 64) * plan.solo_epochs
    total, ok = 0.0, bool(pts)
    try:
        lines = epochs_path.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        rec = json.loads(line)
        for b, steps in rec.get("batch_steps") or [[rec["batch_size"], rec["steps"]]]:
            t = _interp(pts, b)
            ok = ok and t is not None
            total += (t or 0.0) * steps
    if ok and lines:
        out["deba_modelled_s"] = total
        out["deba_modelled_epochs"] = len(lines)
    t_fixed, t = out.get("fixed64_modelled_s"), summary.get("train_time_s")
    if t_fixed and t and summary.get("status") == "complete":
        out["speedup_vs_fixed64_modelled"] = 1 - t / t_fixed
    return out


def _interp(pts: dict[int, float], b: int) -> float | None:
    if b in pts:
        return pts[b]
    sizes = sorted(pts)
    for lo, hi in zip(sizes, sizes[1:]):
        if lo < b < hi:
            w = (math.log(b) - math.log(lo)) / (math.log(hi) - math.log(lo))
            return math.exp((1 - w) * math.log(pts[lo]) + w * math.log(pts[hi]))
    return None


def _remove_tree(path: Path) -> None:
    if path.is_dir():
        for child in sorted(path.rglob("*"), reverse=True):
            child.rmdir() if child.is_dir() else child.unlink()
        path.rmdir()


# --- summary.md -------------------------------------------------------------------------------------------
def _f(v, digits=2) -> str:
    return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def render_summary(d: dict) -> str:
    env = d.get("env") or {}
    lines = ["# deba GPU check", "",
             f"Started {d['started_utc']}; device {env.get('device_name', d['device'])}; torch "
             f"{env.get('torch_version', '?')}; driver {env.get('driver') or '?'}; budget {d['budget_s']:.0f} s, "
             f"{d.get('elapsed_s', 0):.0f} s used{'; QUICK (CPU test settings)' if d['quick'] else ''}.", "",
             "| step | status | seconds | note |", "| --- | --- | --- | --- |"]
    for name in ("env", "check", "bench", "oom", "solo"):
        s = d["steps"].get(name)
        if s:
            lines.append(f"| {name} | {s.get('status')} | {_f(s.get('seconds'), 1)} | "
                         f"{s.get('reason') or s.get('note') or s.get('verdict') or ''} |")
    lines += _summary_check(d) + _summary_bench(d) + _summary_oom(d) + _summary_solo(d)
    if d["graphs_off"]:
        lines += ["", "Graphs off (eager bench and training) for:"] + [f"- {a}: {w}" for a, w in d["graphs_off"].items()]
    if d["notes"]:
        lines += ["", "Notes:"] + [f"- {n}" for n in d["notes"]]
    return "\n".join(lines) + "\n"


def _summary_check(d: dict) -> list[str]:
    s = d["steps"].get("check")
    if not s or not s.get("checks"):
        return []
    lines = ["", "## 1. Graph vs eager (check.json)", "", "| arch | dropout | signals | result | largest rel. diff |",
             "| --- | --- | --- | --- | --- |"]
    for c in s["checks"]:
        result = "skipped: " + c["skipped"] if c.get("skipped") else ("ok" if c.get("ok") else (c.get("error") or "MISMATCH"))
        extra = f" ({c['comparison']})" if c.get("comparison") else ""
        lines.append(f"| {c['arch']} | {c['dropout']}{extra} | {c['signals_mode']} | {result} | "
                     f"{_f(c.get('largest_rel_diff'), 6) if c.get('largest_rel_diff') is None else format(c['largest_rel_diff'], '.1e')} |")
    for arch, why in (s.get("unavailable") or {}).items():
        lines.append(f"| {arch} | - | - | not checked: {why} | - |")
    for probe in s.get("pinning_thread") or []:
        lines.append(f"- capture beside a thread pinning host memory, capture_error_mode {probe.get('mode')}: "
                     + (probe.get("skipped") or f"{'ok' if probe.get('ok') else 'FAILED'} (step mode "
                        f"{probe.get('step_mode')}, {probe.get('pinned_allocations')} pinned allocations, "
                        f"{probe.get('thread_errors')} thread errors{', first: ' + probe['first_thread_error'] if probe.get('first_thread_error') else ''}"
                        f"{', ' + probe['error'] if probe.get('error') else ''})"))
    return lines


def _summary_bench(d: dict) -> list[str]:
    s = d["steps"].get("bench")
    if not s or not s.get("targets"):
        return []
    lines = ["", "## 2. Speed (bench.json; `deba report --bench` reads it)", "", "| target | measured | pass |",
             "| --- | --- | --- |"]
    for t in s["targets"]:
        if "measured_ms" in t:
            measured = "not measured" if t["measured_ms"] is None else f"{t['measured_ms']:.2f} ms (eager {_f(t['eager_ms'])} ms)"
        else:
            measured = "not measured" if t["measured_pct"] is None else f"{t['measured_pct']:.2f}% ({t['where']})"
        lines.append(f"| {t['target']} | {measured} | {'-' if t['pass'] is None else ('yes' if t['pass'] else 'NO')} |")
    return lines


def _summary_oom(d: dict) -> list[str]:
    s = d["steps"].get("oom")
    if not s or "verdict" not in s:
        return []
    cap = "simulated (CPU)" if s.get("simulated") else f"process capped at {s.get('memory_cap_gib')} GiB"
    return ["", "## 4. Out of memory at a grown batch", "",
            f"- {cap}; exit code {s.get('exit_code')}; run status {s.get('run_status')}; step mode {s.get('graphs')}",
            f"- batch sizes by epoch {s.get('batch_sizes')}; B_max cap {s.get('b_max_cap')}",
            *[f"- event: {e}" for e in s.get("events") or []], f"- verdict: {s.get('verdict')}"]


def _summary_solo(d: dict) -> list[str]:
    s = d["steps"].get("solo")
    if not s or "epochs_completed" not in s:  # not run, or under way
        return []
    traj = s.get("batch_sizes") or []
    changes = [f"{b} (epoch {i + 1})" for i, b in enumerate(traj) if i == 0 or traj[i - 1] != b]
    lines = ["", "## 3. Solo run (solo/)", "",
             f"- {s['epochs_completed']} of {s['epochs_planned']} epochs ({s.get('run_status')}); step mode "
             f"{s.get('graphs')} (requested {s.get('graphs_requested')}); train {_f(s.get('train_time_s'), 1)} s, "
             f"eval {_f(s.get('eval_time_s'), 1)} s",
             f"- test accuracy final {_f(s.get('final_test_acc'))}%, best {_f(s.get('best_test_acc'))}% "
             f"(epoch {s.get('best_epoch')}); increases {s.get('increases')}, rollbacks {s.get('rollbacks')}",
             f"- batch size: {', '.join(changes) or '-'}"]
    if s.get("note"):
        lines.append(f"- {s['note']}")
    if "fixed64_modelled_s" in s:
        lines.append(f"- fixed B=64 modelled from bench ({s['modelled_mode']}): {s['fixed64_modelled_s']:.1f} s for "
                     f"{s['epochs_planned']} epochs")
    if "deba_modelled_s" in s:
        lines.append(f"- this run modelled from bench: {s['deba_modelled_s']:.1f} s over {s['deba_modelled_epochs']} "
                     "epochs (compare with its measured train time)")
    if "speedup_vs_fixed64_modelled" in s:
        lines.append(f"- speedup vs modelled fixed B=64: {100 * s['speedup_vs_fixed64_modelled']:.1f}%")
    return lines


# --- the child modes (torch imported here only) -----------------------------------------------------------
def child_env(args: argparse.Namespace) -> int:
    import torch

    from deba.bench import machine_info

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    info = machine_info(device)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        info["driver"] = smi.stdout.split(",")[1].strip() if smi.returncode == 0 and "," in smi.stdout else None
    except (OSError, subprocess.TimeoutExpired) as e:
        info["nvidia_smi"] = f"not available: {e}"
    info["cuda_available"] = torch.cuda.is_available()
    print(json.dumps(info))
    return 0


def child_check(args: argparse.Namespace) -> int:
    """The graph check one architecture at a time, check.json rewritten after each."""
    import torch

    from deba import graph_check, models
    from deba.errors import DebaError
    from deba.logio import write_json

    device = torch.device(args.device)
    result, unavailable = None, {}
    for arch in args.archs:
        try:
            models.canonical_model_name(arch)
        except DebaError:
            unavailable[arch] = f"deba.models cannot build {arch!r} on this checkout"
            continue
        part = graph_check.check_graph_numerics([arch], device=device, batch_sizes=args.batch_sizes, steps=args.steps,
                                                progress=lambda text: print(text, flush=True))
        if result is None:
            result = part
        else:
            result["checks"] += part["checks"]
            result["settings"]["archs"] += part["settings"]["archs"]
            result["ok"] = result["ok"] and part["ok"]
        result["unavailable"] = unavailable
        write_json(args.out, result)
    if result is not None:
        print(graph_check.check_markdown(result))
        # capture beside a thread that pins host memory (what DataLoader workers do): our capture mode, then
        # torch's default "global" as the control that shows the probe can fail
        result["pinning_thread"] = [pinning_probe(device, mode) for mode in ("thread_local", "global")]
        write_json(args.out, result)
        print(json.dumps(result["pinning_thread"], indent=1))
    return 0


def pinning_probe(device, mode: str, sizes=(64, 96, 144, 216)) -> dict:
    """GraphStep captures resnet18 at ``sizes`` (capture_error_mode ``mode``) while another thread allocates and
    frees pinned host memory in a loop; ok when every size ran as a graph and the thread saw no error."""
    import threading
    import warnings

    import torch

    from deba.models import build_model
    from deba.training import step as step_mod

    if device.type != "cuda":
        return {"mode": mode, "skipped": "needs CUDA (pinned memory, graph capture)", "ok": None}
    empty_host_cache = getattr(torch._C, "_host_emptyCache", None)  # else the pinned cache may serve every call
    stop, errors, allocations = threading.Event(), [], [0]

    def pin() -> None:
        while not stop.is_set():
            try:
                buf = torch.empty(1 << 22, dtype=torch.uint8, pin_memory=True)
                del buf
                if empty_host_cache is not None:
                    empty_host_cache()
                allocations[0] += 1
            except Exception as e:  # noqa: BLE001 - counted: the point of the probe
                errors.append(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
                time.sleep(0.001)

    saved_mode, step_mod.CAPTURE_ERROR_MODE = step_mod.CAPTURE_ERROR_MODE, mode
    torch.manual_seed(0)
    step = step_mod.GraphStep(build_model("resnet18", 10).to(device).train(), None, requested="auto")
    thread = threading.Thread(target=pin, daemon=True)
    out: dict = {"mode": mode, "batch_sizes": list(sizes), "host_cache_emptied": empty_host_cache is not None}
    thread.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for b in sizes:
                x = torch.randn(b, 3, 32, 32, device=device)
                y = torch.randint(0, 10, (b,), device=device)
                step(x, y)
                step(x, y)
            torch.cuda.synchronize(device)
        out["error"] = None
    except Exception as e:  # noqa: BLE001 - recorded
        out["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    finally:
        stop.set()
        thread.join(5)
        step_mod.CAPTURE_ERROR_MODE = saved_mode
        out.update(step_mode=step.mode, graphs=len(step._graphs), fell_back=step.graph_off_reason,
                   pinned_allocations=allocations[0], thread_errors=len(errors),
                   first_thread_error=errors[0] if errors else None)
        step.free_graphs()
    out["ok"] = out["error"] is None and step.mode == "graph" and not errors
    return out


def child_oom(args: argparse.Namespace) -> int:
    import torch

    from deba.cli import main

    if args.simulate_oom_above:
        from deba.training import step as step_mod

        real = step_mod.EagerStep._eager_step
        limit = args.simulate_oom_above

        def eager_step(self, x, y, *args, **kwargs):  # the real one's later arguments (split) pass through
            if x.shape[0] > limit:
                raise step_mod.OOM_ERROR(f"CUDA out of memory (simulated above {limit} samples)")
            return real(self, x, y, *args, **kwargs)

        step_mod.EagerStep._eager_step = eager_step
    elif torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.oom_gib * 2**30 / total))
    return main(["train", *args.train_args])  # one process, no process group: a plain return is safe


# --- entry ------------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's own adds the usage)
        print(f"gpu_check: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir", nargs="?", help="folder for the results (created; must be empty or absent)")
    p.add_argument("--data", default="data/cifar10-jpeg.npz", help="the CIFAR-10 JPEG archive (default: %(default)s)")
    p.add_argument("--budget-s", type=float, default=450.0, help="end everything within this many seconds")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --quick: the tests)")
    p.add_argument("--quick", action="store_true", help="tiny settings (tiny_cnn, generated data): for tests")
    p.add_argument("--solo-epochs", type=int, default=None, help="epochs of the solo run (default 100; 2 quick)")
    p.add_argument("--oom-gib", type=float, default=4.0, help="memory cap of the oom step's process (default 4)")
    p.add_argument("--skip", nargs="*", default=[], choices=["env", "check", "bench", "oom", "solo"])
    p.add_argument("--child", choices=["env", "check", "oom"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--archs", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--batch-sizes", nargs="*", type=int, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--simulate-oom-above", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def fail(text: str) -> int:
    print(f"gpu_check: error: {text}", file=sys.stderr)
    return 2


_RUNNING: dict = {}  # the child process and the Results of the run under way (for a stop from outside)


def _stopped(signum, frame) -> None:
    """SIGTERM/SIGINT (the shell's hard limit, or a person): end the step's processes, keep the results."""
    proc, res = _RUNNING.get("proc"), _RUNNING.get("res")
    if proc is not None and proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if res is not None:
        res.data["notes"].append(f"stopped from outside by signal {signum}")
        res.save()
    os._exit(124)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args: list[str] = []
    if "--" in argv:  # the oom child: everything after -- goes to deba train
        i = argv.index("--")
        argv, train_args = argv[:i], argv[i + 1:]
    args = parse_args(argv)
    args.train_args = train_args
    if args.child:
        return {"env": child_env, "check": child_check, "oom": child_oom}[args.child](args)
    if not args.outdir:
        return fail("OUTDIR is required")
    out = Path(args.outdir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        return fail(f"{out} exists and is not an empty folder")
    if not (args.budget_s > 0):
        return fail(f"--budget-s must be > 0, got {args.budget_s}")
    if args.solo_epochs is not None and args.solo_epochs < 1:
        return fail(f"--solo-epochs must be >= 1, got {args.solo_epochs}")
    if not (args.oom_gib > 0):
        return fail(f"--oom-gib must be > 0, got {args.oom_gib}")
    if not args.quick and not Path(args.data).is_file():
        return fail(f"{args.data}: no such file (copy cifar10-jpeg.npz there, or pass --data)")
    out.mkdir(parents=True, exist_ok=True)
    args.data = Path(args.data).resolve()
    plan = Plan(args)
    res = Results(out, args.budget_s, plan)
    # outside OUTDIR (git-ignored): the oom run, child output; the decoded data cache is kept between runs
    work = ROOT / "runs" / "gpu-check" / f"work-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1", DEBA_CACHE=os.environ.get("DEBA_CACHE", str(ROOT / "runs" / "gpu-check" / "cache")))
    _RUNNING["res"] = res
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stopped)
    res.save()
    steps = {"env": step_env, "check": step_check, "bench": step_bench,
             "oom": lambda *a: step_oom(*a, gib=args.oom_gib), "solo": step_solo}
    for name, fn in steps.items():
        if name in args.skip:
            res.step(name, status="skipped", reason="--skip")
            continue
        limit = budget_for(res, name, plan)
        if limit is None:
            usable = max(0.0, res.left() - FINAL_WRITE_S)
            res.step(name, status="skipped", reason=f"{usable:.0f} s left, needs {plan.times[name][0]} s")
            continue
        print(f"[gpu_check {time.strftime('%H:%M:%S')}] {name}: up to {limit:.0f} s", flush=True)
        res.step(name, status="running")
        try:
            fn(res, plan, work, env, limit)
        except Exception as e:  # noqa: BLE001 - one step's surprise must not lose the others' results
            res.step(name, status="failed", reason=f"{type(e).__name__}: {e}")
    res.save()
    _remove_tree(work)
    print((out / "summary.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
