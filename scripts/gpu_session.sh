#!/usr/bin/env bash
# deba on a lent GPU machine: one command per step. The plan, budgets and how results come home are in
# docs/gpu-runbook.md. Run from anywhere inside the checkout on the GPU machine:
#
#   bash scripts/gpu_session.sh all            # start env check oom bench solo quick in the background
#                                              # (setsid nohup) and wait; call again to keep waiting
#   bash scripts/gpu_session.sh bg STEP...     # the same for chosen steps
#   bash scripts/gpu_session.sh STEP...        # run steps in the foreground (the short ones: env check oom)
#   bash scripts/gpu_session.sh status         # what ran, what runs
#
# Steps: env (versions, unit tests under this torch, data decode), check (graph vs eager numerics),
# oom (a real out-of-memory at a grown batch), bench (ms/step, epoch time, signals overhead), solo (resnet18
# CIFAR-10 100 epochs, fixed and paper-bounded, alone on the GPU), quick (a shard of studies/quick.yaml).
# Work goes to runs/gpu/ (git-ignored; it survives between calls while the machine stays warm). Every call
# ends by packing the results of every finished step into $OUT/gpu-results.tar.gz (plus $OUT/progress.txt)
# and printing their summaries. Knobs (environment): WAIT_S (540: how long a call waits for the background
# work), SESSION_BUDGET_S (1500: seconds from the first `bg`/`all` call the whole plan may use; quick gets
# what is left), QUICK_TIME_LIMIT, QUICK_SHARD (0/3), QUICK_PARALLEL (4), OOM_GIB (6).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$PWD
W="$ROOT/runs/gpu"
OUT="${OUT:-$W/out}"
DATA="$ROOT/data/cifar10-jpeg.npz"
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 DEBA_CACHE="$W/cache"
WAIT_S=${WAIT_S:-540}
ALL_STEPS="env check oom bench solo quick"
mkdir -p "$W" "$OUT"

say() { echo "[gpu_session $(date +%H:%M:%S)] $*"; }
deba() { "$PY" -m deba "$@"; }
need_data() {
  [ -f "$DATA" ] && return 0
  say "missing $DATA: copy /work/shared/data/cifar10-jpeg.npz to data/ in the checkout and name \"data\" in carry"
  return 2
}

# --- the steps: each writes only under $W/<step>/ and returns its exit code ------------------------------
step_env() {
  local d=$W/env; mkdir -p "$d"
  {
    nvidia-smi -L; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" - <<'PY'
import os, platform, subprocess, sys
import torch, torchvision
print("python", platform.python_version(), "torch", torch.__version__, "torchvision", torchvision.__version__,
      "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("device", torch.cuda.get_device_name(0), "torch.OutOfMemoryError:", hasattr(torch, "OutOfMemoryError"))
# Can a run cap its memory from the environment (no trainer key needed)? torch added this allocator option
# in 2025; the oom step uses torch.cuda.set_per_process_memory_fraction either way.
probe = ("import torch; torch.empty(1, device='cuda'); "
         "print(torch.cuda.get_per_process_memory_fraction(0))")
env = dict(os.environ, PYTORCH_CUDA_ALLOC_CONF="per_process_memory_fraction:0.25")
r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
print("PYTORCH_CUDA_ALLOC_CONF=per_process_memory_fraction:0.25 ->",
      r.stdout.strip() or (r.stderr.strip().splitlines() or ["?"])[-1])
PY
  } 2>&1 | tee "$d/env.txt"
  need_data || return 2
  "$PY" -c "from deba.data import load_dataset as l; d=l('cifar10', data='$DATA'); print('data', tuple(d.train_x.shape), tuple(d.test_x.shape))" 2>&1 | tee -a "$d/env.txt"
  # the CPU unit tests of the fast path, under this machine's torch (API compatibility)
  timeout 300 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_step.py tests/test_signals.py tests/test_bench.py 2>&1 \
    | tail -5 | tee -a "$d/env.txt"
  return "${PIPESTATUS[0]}"
}

step_check() {
  local d=$W/check; mkdir -p "$d"
  deba bench --check --out "$d/check.json" --markdown "$d/check.md"  # resnet18 mobilenet_v3_large densenet121, fp32
  local rc=$?
  # informational: bf16 autocast and channels_last through the same check
  deba bench --check --arch resnet18 --amp bf16 --channels-last --out "$d/check-bf16.json" --markdown "$d/check-bf16.md"
  return $rc
}

step_oom() {
  local d=$W/oom; mkdir -p "$d"; need_data || return 2
  rm -rf "$d/run"
  # step-grow 1024 -> 4096 -> 16384 under a cap of OOM_GIB GiB: 16384 cannot fit (resnet18 keeps ~0.4 MB of
  # activations per 32x32 image), so the epoch-3 step must fail, B_max be capped and the epoch go on.
  OOM_GIB=${OOM_GIB:-6} "$PY" - "$DATA" "$d/run" <<'PY'
import os, sys
import torch
gib = float(os.environ["OOM_GIB"])
torch.cuda.set_per_process_memory_fraction(gib * 2**30 / torch.cuda.get_device_properties(0).total_memory)
from deba.cli import main
sys.exit(main(["train", "--arch", "resnet18", "--data", sys.argv[1], "--policy", "step-grow", "--start-batch", "1024",
               "--milestones", "1", "2", "--grow-factor", "4", "--b-max", "16384", "--epochs", "3", "--seed", "0",
               "--checkpoint-every", "0", "--out", sys.argv[2]]))
PY
  local rc=$?
  "$PY" - "$d" "$rc" <<'PY'
import json, sys
from pathlib import Path
d, rc = Path(sys.argv[1]), int(sys.argv[2])
s = json.loads((d / "run" / "summary.json").read_text()) if (d / "run" / "summary.json").exists() else {}
events = [e["event"] for e in s.get("events", [])]
oom = [e for e in events if "out of memory" in e]
ok = rc == 0 and bool(oom) and s.get("status") == "complete" and s.get("graphs") == "graph"
lines = ["# oom: a real out-of-memory at a grown batch (resnet18, step-grow 1024/4096/16384, capped memory)", "",
         f"- exit code {rc}; status {s.get('status')}; step mode at the end: {s.get('graphs')}",
         f"- batch sizes by epoch: {s.get('batch_sizes')}; b_max_cap {s.get('b_max_cap')}",
         *[f"- event: {e}" for e in events],
         f"- verdict: {'PASS' if ok else 'FAIL'} (an OOM event, the run completed, still on CUDA graphs)"]
if rc == 0 and not oom:
    lines.append("- no OOM happened: run again with a smaller OOM_GIB (e.g. OOM_GIB=3)")
(d / "oom.md").write_text("\n".join(lines) + "\n")
sys.exit(0 if ok else 1)
PY
}

step_bench() {
  local d=$W/bench; mkdir -p "$d"
  deba bench --arch resnet18 densenet121 mobilenet_v3_large --batch-sizes 64 128 256 512 1024 2048 \
    --modes eager graph --out "$d/bench.json" --markdown "$d/bench.md" --plot "$d/bench.png" || return $?
  "$PY" - "$d" <<'PY'
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
b = json.loads((d / "bench.json").read_text())
rec = {(r["arch"], r["batch_size"], r["mode"]): r for r in b["records"]}
lines = ["# bench targets (graph mode, fp32)", "", "| target | measured | verdict |", "| --- | --- | --- |"]
ok = True
for arch, limit in (("resnet18", 2.0), ("densenet121", 9.0), ("mobilenet_v3_large", 4.0)):
    r = rec.get((arch, 64, "graph"))
    good = r is not None and r["step_ms"] <= limit
    ok &= good
    lines.append(f"| {arch} B=64 <= {limit} ms/step | {r['step_ms']:.2f} ms" if r else f"| {arch} B=64 | missing")
    lines[-1] += f" | {'PASS' if good else 'FAIL'} |"
over = [o for o in b["overhead"] if o["mode"] == "graph"]
worst = max(over, key=lambda o: o["overhead_pct"], default=None)
good = worst is not None and worst["overhead_pct"] <= 1.0
ok &= good
if worst:
    lines.append(f"| signals overhead <= 1% of the epoch (worst graph record) | {worst['overhead_pct']:.2f}% "
                 f"({worst['arch']} B={worst['batch_size']}) | {'PASS' if good else 'FAIL'} |")
at64 = max((o for o in over if o["batch_size"] == 64), key=lambda o: o["overhead_pct"], default=None)
if at64:
    lines.append(f"| (for reference) signals overhead at B=64, worst arch | {at64['overhead_pct']:.2f}% "
                 f"({at64['arch']}) | - |")
lines += ["", "Overhead is a difference of two medians plus the end-of-epoch read: noisy where epochs are short.",
          "Notes: " + ("; ".join(b.get("notes", [])) or "none")]
(d / "bench-targets.md").write_text("\n".join(lines) + "\n")
sys.exit(0 if ok else 1)
PY
}

solo_run() {  # name, extra train flags...
  local name=$1; shift
  local out=$W/solo/$name
  if [ -f "$out/summary.json" ] && grep -q '"status": "complete"' "$out/summary.json"; then return 0; fi
  deba train --arch resnet18 --data "$DATA" --epochs 100 --seed 42 --checkpoint-every 25 --quiet --resume \
    --out "$out" "$@"
}

step_solo() {
  local d=$W/solo; mkdir -p "$d"; need_data || return 2
  solo_run fixed --policy fixed || return $?
  solo_run paper-bounded --policy deba --preset paper-bounded || return $?
  tar czf "$d/solo.tar.gz" -C "$d" --exclude checkpoint.pt fixed paper-bounded
  "$PY" - "$d" <<'PY'
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
lines = ["# solo: resnet18, CIFAR-10 (offline JPEG copy), 100 epochs, seed 42, alone on the GPU", "",
         "| run | train time (s) | target | eval time (s) | final acc (%) | best acc (%) | batch sizes | step mode |",
         "| --- | --- | --- | --- | --- | --- | --- | --- |"]
ok = True
for name, limit in (("fixed", 200.0), ("paper-bounded", 70.0)):
    s = json.loads((d / name / "summary.json").read_text())
    sizes = [b for i, b in enumerate(s["batch_sizes"]) if i == 0 or b != s["batch_sizes"][i - 1]]
    good = s["train_time_s"] <= limit and s["status"] == "complete"
    ok &= good
    lines.append(f"| {name} | {s['train_time_s']:.1f} | <= {limit:.0f}: {'PASS' if good else 'FAIL'} | "
                 f"{s['eval_time_s']:.1f} | {s['final_test_acc']} | {s['best_test_acc']} | "
                 f"{' '.join(map(str, sizes))} | {s['graphs']} |")
lines += ["", f"device {s['device_name']}, torch {s['torch_version']}"]
(d / "solo.md").write_text("\n".join(lines) + "\n")
sys.exit(0 if ok else 1)
PY
}

step_quick() {
  local d=$W/quick; mkdir -p "$d"; need_data || return 2
  local limit=${QUICK_TIME_LIMIT:-}
  if [ -z "$limit" ]; then
    local deadline; deadline=$(cat "$W/deadline" 2>/dev/null || echo $(( $(date +%s) + 600 )))
    limit=$(( deadline - $(date +%s) - 90 ))
  fi
  if [ "$limit" -lt 180 ]; then
    say "quick: only ${limit}s left of the session budget; skipped (set QUICK_TIME_LIMIT to force)"
    echo "skipped: ${limit}s left" > "$d/quick-status.txt"; return 0
  fi
  local restore=()
  [ -f "$ROOT/docs/results/quick.tar.gz" ] && restore=(--restore "$ROOT/docs/results/quick.tar.gz")
  say "quick: shard ${QUICK_SHARD:-0/3}, time limit ${limit}s"
  deba study studies/quick.yaml --out "$ROOT/runs/quick" --shard "${QUICK_SHARD:-0/3}" \
    --parallel "${QUICK_PARALLEL:-4}" --time-limit "$limit" --data "cifar10=$DATA" "${restore[@]}" \
    --pack "$d/quick.tar.gz"
  local rc=$?
  echo "deba study exit code $rc (0 all done, 3 time limit with runs left, 4 waiting on another shard)" \
    > "$d/quick-status.txt"
  case $rc in 0|3|4) return 0 ;; *) return $rc ;; esac
}

# --- running, waiting, collecting --------------------------------------------------------------------------
run_step() {  # run one step in this process, recording its exit code and duration
  local s=$1 t0 rc
  declare -F "step_$s" >/dev/null || { say "unknown step $s (steps: $ALL_STEPS)"; return 2; }
  t0=$(date +%s); say "$s: start"
  rm -f "$W/$s.rc"
  "step_$s" > >(tee "$W/$s.log") 2>&1
  rc=$?
  echo "$rc $(( $(date +%s) - t0 ))" > "$W/$s.rc"
  say "$s: exit $rc after $(( $(date +%s) - t0 ))s"
  return $rc
}

pipeline_alive() { [ -f "$W/pipeline.pid" ] && kill -0 "$(cat "$W/pipeline.pid")" 2>/dev/null; }

collect() {  # everything finished so far -> $OUT/gpu-results.tar.gz, $OUT/progress.txt; summaries to stdout
  local stage=$W/collect s
  rm -rf "$stage"; mkdir -p "$stage"
  for s in $ALL_STEPS; do
    [ -d "$W/$s" ] || continue
    mkdir -p "$stage/$s"
    find "$W/$s" -maxdepth 1 -type f \( -name '*.md' -o -name '*.json' -o -name '*.png' -o -name '*.txt' \
      -o -name '*.tar.gz' \) -exec cp {} "$stage/$s/" \;
    [ -f "$W/$s.log" ] && tail -c 200000 "$W/$s.log" > "$stage/$s/$s.log"
  done
  # a study still running: pack what is finished so far (logs only) so a lost machine loses less
  if [ -d "$ROOT/runs/quick" ] && [ ! -f "$W/quick.rc" ]; then
    mkdir -p "$stage/quick"
    deba study studies/quick.yaml --out "$ROOT/runs/quick" --data "cifar10=$DATA" --pack "$stage/quick/quick.tar.gz" \
      --pack-only >/dev/null 2>&1 || true
  fi
  tar czf "$OUT/gpu-results.tar.gz" -C "$stage" .
  {
    for s in $ALL_STEPS; do
      if [ -f "$W/$s.rc" ]; then read -r rc secs < "$W/$s.rc"; echo "$s: exit $rc (${secs}s)"
      elif [ -f "$W/$s.log" ]; then echo "$s: running or interrupted"; fi
    done
    pipeline_alive && echo "background pipeline: running (pid $(cat "$W/pipeline.pid"))"
    [ -f "$W/pipeline.log" ] && { echo "--- pipeline.log (tail)"; tail -n 15 "$W/pipeline.log"; }
  } > "$OUT/progress.txt"
  for s in $ALL_STEPS; do
    for f in "$W/$s"/*.md "$W/$s"/quick-status.txt; do
      [ -f "$f" ] && { echo; echo "=== $s/$(basename "$f")"; cat "$f"; }
    done
  done
  echo; cat "$OUT/progress.txt"
}

wait_pipeline() {
  local end=$(( $(date +%s) + WAIT_S ))
  while pipeline_alive && [ "$(date +%s)" -lt "$end" ]; do sleep 5; done
  if pipeline_alive; then
    say "still running after ${WAIT_S}s: call the same command again within 30 s to keep the machine (and wait)"
  else
    say "background pipeline finished"
  fi
}

cmd=${1:-}
case "$cmd" in
  ""|-h|--help) sed -n '2,20p' "$0"; exit 0 ;;
  status) collect; exit 0 ;;
  _pipeline)  # internal: the background job started by bg/all; a failed step does not stop the next
    shift; echo $$ > "$W/pipeline.pid"
    for s in "$@"; do
      # a step that already succeeded on this machine is not redone (run it in the foreground to redo it)
      if [ -f "$W/$s.rc" ] && [ "$(cut -d' ' -f1 "$W/$s.rc")" = 0 ]; then say "$s: done before, skipped"; continue; fi
      run_step "$s"
    done; say "pipeline done"; exit 0 ;;
  all|bg)
    shift; steps=$*; [ "$cmd" = all ] && steps=$ALL_STEPS
    [ -n "$steps" ] || { say "bg needs steps: $ALL_STEPS"; exit 2; }
    if pipeline_alive; then
      say "a background pipeline is already running; waiting for it (not starting: $steps)"
    else
      [ -f "$W/deadline" ] || echo $(( $(date +%s) + ${SESSION_BUDGET_S:-1500} )) > "$W/deadline"
      rm -f "$W/pipeline.pid"
      # a new session (setsid): the machine's tool ends a call's leftover processes, but not these
      setsid nohup bash "$ROOT/scripts/gpu_session.sh" _pipeline $steps > "$W/pipeline.log" 2>&1 < /dev/null &
      for _ in $(seq 100); do [ -s "$W/pipeline.pid" ] && break; sleep 0.1; done
      say "started in the background: $steps (log runs/gpu/pipeline.log)"
    fi
    wait_pipeline; collect; pipeline_alive && exit 75; exit 0 ;;
  *)
    if pipeline_alive; then say "a background pipeline is running: the GPU is busy; use 'status' or 'all'"; exit 2; fi
    [ -f "$W/deadline" ] || echo $(( $(date +%s) + ${SESSION_BUDGET_S:-1500} )) > "$W/deadline"
    rc=0; for s in "$@"; do run_step "$s" || rc=$?; done
    collect; exit $rc ;;
esac
