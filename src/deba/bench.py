"""`deba bench`: time one training step per architecture, batch size and step kind, alone on the device.

For each architecture, batch size and mode (``eager`` or ``graph``) the step of
:mod:`deba.training.step` runs on random data already on the device: a warm-up (which, for the graph
mode, includes the capture), then many timed steps. On CUDA each step is bracketed by device events
(consecutive events, so the time includes any gap in which the device waited for the host, which is
what limits training at CIFAR sizes); on the CPU by ``time.perf_counter``. The step time is the median.
An epoch of ``epoch_samples`` images (CIFAR-10: 50,000) takes ``step time x (epoch_samples // B)``:
the model behind the paper's Figure 1 and the modelled solo times of ``deba report --bench``.

DEBA's overhead: the same step timed again with a :class:`deba.signals.GradientSignals` attached
(loss accumulated on the device every step), plus the end-of-epoch read (``end_epoch``: the gradient
statistics and the one host sync), as a percentage of the plain epoch time. The difference of two
medians is noisy and can come out slightly negative when the true cost is below the noise.

Output: a JSON object (``schema_version``, ``machine``, ``settings``, ``records`` -- one per
arch/batch size/mode, with ``steps`` = steps per epoch as ``deba report`` expects -- ``overhead`` and
``notes``), a markdown table, and optionally a plot of epoch time against batch size.
"""
from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .errors import DebaError
from .logio import atomic_write_text, write_json
from .models import build_model, canonical_model_name, check_model_output
from .signals import DEFAULT_GNS_EVERY
from .training import build

EPOCH_SAMPLES = 50_000  # CIFAR-10's training set
MODES = ("eager", "graph")
AMP_MODES = ("none", "bf16")
CUDA_ARCHS = ("resnet18", "resnet50", "densenet121", "efficientnet_b0", "mobilenet_v3_large", "vit_b_16")
CUDA_BATCH_SIZES = (64, 128, 256, 512, 1024, 2048)
CPU_ARCHS = ("tiny_cnn", "resnet18")
CPU_BATCH_SIZES = (8, 16)
GPT_VOCAB = 65


@dataclass
class BenchSettings:
    archs: list[str]
    batch_sizes: list[int]
    device: str
    modes: list[str]
    steps: int
    warmup: int
    amp: str = "none"
    channels_last: bool = False
    epoch_samples: int = EPOCH_SAMPLES
    num_classes: int = 10
    image_size: int = 32
    overhead: bool = True
    signals_mode: str = "last"
    notes: list[str] = field(default_factory=list)


def resolve_device(name: str | None) -> torch.device:
    dev = build.resolve_device(name or "auto")
    if dev.type not in ("cpu", "cuda"):
        raise DebaError(f"device {name!r}: bench runs on cpu or cuda")
    return dev


def _positive_int(what: str, value: Any) -> int:
    raw = value
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit():
            raise DebaError(f"{what} must be an integer >= 1, got {value!r}")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DebaError(f"{what} must be an integer >= 1, got {raw!r}")
    return value


def make_settings(archs: Sequence[str] | None = None, batch_sizes: Sequence[Any] | None = None,
                  device: str | None = "auto", modes: Sequence[str] | None = None, steps: int | None = None,
                  warmup: int | None = None, amp: str = "none", channels_last: bool = False,
                  epoch_samples: int = EPOCH_SAMPLES, overhead: bool = True,
                  signals_mode: str = "last") -> BenchSettings:
    """Validated settings, with the defaults of the device (CUDA: the paper's six models at B 64..2048,
    eager and graph; CPU: tiny_cnn and resnet18 at B 8 and 16, eager only)."""
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    notes: list[str] = []
    archs = [canonical_model_name(a) for a in (archs or (CUDA_ARCHS if cuda else CPU_ARCHS))]
    epoch_samples = _positive_int("epoch samples", epoch_samples)
    sizes = sorted({_positive_int("batch size", b) for b in (batch_sizes or (CUDA_BATCH_SIZES if cuda else CPU_BATCH_SIZES))})
    too_big = [b for b in sizes if b > epoch_samples]
    if too_big:
        raise DebaError(f"batch size {too_big[0]} exceeds the epoch ({epoch_samples} samples)")
    modes = list(dict.fromkeys(modes or (MODES if cuda else ("eager",))))
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise DebaError(f"unknown mode {bad[0]!r}; modes are {', '.join(MODES)}")
    if not cuda and "graph" in modes:
        modes.remove("graph")
        notes.append(f"graph mode skipped: CUDA graphs need a CUDA device, this is {dev.type}")
    if not modes:
        raise DebaError("no mode left to run on this device (graph mode needs CUDA)")
    if amp not in AMP_MODES:
        raise DebaError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    steps = _positive_int("steps", steps if steps is not None else (50 if cuda else 5))
    warmup = warmup if warmup is not None else (10 if cuda else 2)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise DebaError(f"warmup must be an integer >= 0, got {warmup!r}")
    return BenchSettings(archs=archs, batch_sizes=sizes, device=str(dev), modes=modes, steps=steps, warmup=warmup,
                         amp=amp, channels_last=bool(channels_last), epoch_samples=epoch_samples,
                         overhead=overhead, signals_mode=signals_mode, notes=notes)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import torchvision

        info["torchvision_version"] = torchvision.__version__
    except ImportError:  # pragma: no cover - a dependency of deba
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(cuda_version=torch.version.cuda, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cudnn_version=torch.backends.cudnn.version())
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int,
               device: torch.device, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Seconds of each of ``steps`` calls of ``step(x, y)`` after ``warmup`` untimed calls (on a CPU device,
    read from ``clock``: wall time by default)."""
    for _ in range(warmup):
        step(x, y)
    _sync(device)
    if device.type == "cuda":
        events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
        events[0].record()
        for i in range(steps):
            step(x, y)
            events[i + 1].record()
        events[-1].synchronize()
        return [events[i].elapsed_time(events[i + 1]) / 1000.0 for i in range(steps)]
    times = []
    for _ in range(steps):
        t0 = clock()
        step(x, y)
        times.append(clock() - t0)
    return times


def _end_epoch_seconds(signals, device: torch.device, repeats: int = 5) -> float:
    """Median wall time of ``signals.end_epoch()`` (it ends with its one host read, so it is synchronous)."""
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        signals.end_epoch()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _measure(model, settings: BenchSettings, device: torch.device, arch: str, batch: int, mode: str
             ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    from .signals import GradientSignals
    from .training.step import make_step

    gen = torch.Generator(device=device).manual_seed(batch)
    common = {"mode": mode, "amp": settings.amp, "channels_last": settings.channels_last}
    if arch == "gpt":  # a batch of token windows; the language-model step: AdamW, clipping, loss over positions
        from .gpt import lm_loss

        shape = (batch, model.config.block_size)
        x = torch.randint(0, model.config.vocab_size, shape, device=device, generator=gen)
        y = torch.randint(0, model.config.vocab_size, shape, device=device, generator=gen)
        common.update(loss_fn=lm_loss, optimizer="adamw", betas=(0.9, 0.99), grad_clip=1.0, weight_decay=0.1)
    else:
        x = torch.randn(batch, 3, settings.image_size, settings.image_size, device=device, generator=gen)
        y = torch.randint(0, settings.num_classes, (batch,), device=device, generator=gen)
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    # the graph mode's first call captures: give it at least two untimed calls
    warmup = max(settings.warmup, 2) if mode == "graph" else settings.warmup
    steps_per_epoch = settings.epoch_samples // batch

    plain = make_step(model, None, **common)
    try:
        times = time_steps(plain, x, y, settings.steps, warmup, device)
    finally:
        plain.free_graphs()
        del plain
    step_s = statistics.median(times)
    epoch_s = step_s * steps_per_epoch
    record = {
        "arch": arch, "batch_size": batch, "mode": mode,
        "step_ms": step_s * 1e3,
        "step_ms_p10": _percentile(times, 10) * 1e3, "step_ms_p90": _percentile(times, 90) * 1e3,
        "epoch_s": epoch_s, "steps": steps_per_epoch, "samples": settings.epoch_samples,
        "images_per_s": batch / step_s if step_s > 0 else math.nan,
        **({"tokens_per_s": x.numel() / step_s if step_s > 0 else math.nan} if arch == "gpt" else {}),
        "timed_steps": settings.steps, "warmup_steps": warmup,
        "amp": settings.amp, "channels_last": settings.channels_last,
        "device_name": device_name(device),
    }
    if not settings.overhead:
        return record, None
    _free(device)
    signals = GradientSignals([p for p in model.parameters() if p.requires_grad], mode=settings.signals_mode)
    with_signals = make_step(model, signals, **common)
    try:
        sig_times = time_steps(with_signals, x, y, settings.steps, warmup, device)
        end_s = _end_epoch_seconds(signals, device)
    finally:
        with_signals.free_graphs()
        del with_signals
    sig_s = statistics.median(sig_times)
    noise = _noise_overhead(model, common, x, y, settings, warmup, device)
    overhead_s = (sig_s - step_s) * steps_per_epoch + end_s
    overhead = {
        "arch": arch, "batch_size": batch, "mode": mode, "signals_mode": settings.signals_mode,
        "step_ms_plain": step_s * 1e3, "step_ms_signals": sig_s * 1e3, "end_epoch_ms": end_s * 1e3,
        "overhead_s_per_epoch": overhead_s,
        "overhead_pct": 100.0 * overhead_s / epoch_s if epoch_s > 0 else math.nan,
        **noise,
        "device_name": device_name(device),
    }
    return record, overhead


NOISE_REPEATS = 7


def _noise_overhead(model, common: dict, x, y, settings: BenchSettings, warmup: int, device: torch.device,
                    repeats: int = NOISE_REPEATS) -> dict[str, Any]:
    """Cost of the gradient-noise signals at their most frequent (every step a two-size sample, gns_every 1):
    blocks of plain steps and of noise steps, interleaved ``repeats`` times, so a shared machine's drift hits
    both; the overhead is the median over repetitions of (noise block / plain block - 1). On a CPU device the
    steps are timed in this process's CPU time (``time.process_time``), which other processes on a shared
    machine do not inflate as they do wall time (seen here: 19% and 53% for the same step in two wall-time
    runs); on a GPU, with CUDA events."""
    from .signals import GradientSignals
    from .training.step import make_step

    plain = make_step(model, None, **common)
    signals = GradientSignals([p for p in model.parameters() if p.requires_grad], gns=True)
    noisy = make_step(model, signals, **common)

    def split_step(a, b):
        noisy.gns_split_next = True
        noisy(a, b)

    block = max(1, settings.steps // 2)
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    ratios, plain_s, noise_s = [], [], []
    try:
        time_steps(plain, x, y, 0, warmup, device)
        time_steps(split_step, x, y, 0, warmup, device)
        for _ in range(repeats):
            p = statistics.median(time_steps(plain, x, y, block, 0, device, clock))
            n = statistics.median(time_steps(split_step, x, y, block, 0, device, clock))
            plain_s.append(p)
            noise_s.append(n)
            ratios.append(n / p if p > 0 else math.nan)
        signals.end_epoch()
    finally:
        plain.free_graphs()
        noisy.free_graphs()
    return {"noise_step_ms": statistics.median(noise_s) * 1e3, "noise_plain_step_ms": statistics.median(plain_s) * 1e3,
            "noise_overhead_pct": 100.0 * (statistics.median(ratios) - 1.0), "noise_repeats": repeats,
            "noise_clock": "process CPU time" if device.type == "cpu" else "CUDA events",
            "noise_ratios": ratios}


def run_bench(settings: BenchSettings, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the whole grid; returns the JSON-ready result (see the module docstring)."""
    from .training.step import OOM_ERROR

    device = torch.device(settings.device)
    say = progress or (lambda text: None)
    result: dict[str, Any] = {
        "machine": machine_info(device),
        "settings": {k: v for k, v in asdict(settings).items() if k != "notes"},
        "records": [], "overhead": [], "notes": list(settings.notes),
    }
    for arch in settings.archs:
        for mode in settings.modes:
            torch.manual_seed(0)
            # gpt: a 65-symbol vocabulary (tinyshakespeare's characters), nanoGPT's small shape, context 64
            classes = GPT_VOCAB if arch == "gpt" else settings.num_classes
            model = build_model(arch, classes, settings.image_size).to(device)
            if settings.channels_last:
                model = model.to(memory_format=torch.channels_last)
            if ":" in arch:  # a user's model that does not fit the bench's images: one line, not a traceback
                check_model_output(model, (3, settings.image_size, settings.image_size), settings.num_classes,
                                   arch, device, settings.channels_last)
            model.train()
            for batch in settings.batch_sizes:
                try:
                    record, overhead = _measure(model, settings, device, arch, batch, mode)
                except OOM_ERROR:
                    note = f"{arch} {mode}: out of memory at batch size {batch}; larger sizes skipped"
                    result["notes"].append(note)
                    say(note)
                    _free(device)
                    break
                except DebaError as e:  # a graph capture that cannot work for this model
                    note = f"{arch} {mode}: {e}"
                    result["notes"].append(note)
                    say(note)
                    break
                result["records"].append(record)
                if overhead:
                    result["overhead"].append(overhead)
                extra = f", signals {overhead_text(overhead['overhead_pct'])}" if overhead else ""
                say(f"{arch} B={batch} {mode}: {record['step_ms']:.2f} ms/step, {record['epoch_s']:.2f} s/epoch{extra}")
            del model
            _free(device)
    return result


# --- outputs ----------------------------------------------------------------------------------------------
def _fmt(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def overhead_text(pct: float) -> str:
    """The signals' share of the epoch in words; below zero it is timing noise (the signalled step
    cannot be faster than the plain one), said so rather than printed as a saving."""
    if pct is None or not math.isfinite(pct):
        return "overhead not measured"
    if pct < 0:
        return f"overhead below timing noise ({pct:+.2f}% measured)"
    return f"{pct:+.2f}% of epoch"


def _per_default(pct: float | None) -> float | None:
    """The sampled step's overhead spread over deba train's default sampling (every DEFAULT_GNS_EVERY-th step):
    the other steps are plain steps, so the cost per step is the sampled one's divided by k."""
    return None if pct is None else pct / DEFAULT_GNS_EVERY


def _overhead_cell(pct: float) -> str:
    return f"noise ({_fmt(pct)})" if pct is not None and math.isfinite(pct) and pct < 0 else _fmt(pct)


def markdown(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    over = {(o["arch"], o["batch_size"], o["mode"]): o for o in result.get("overhead", [])}
    lines = [
        "# deba bench",
        "",
        (f"Device: {m['device_name']}; torch {m['torch_version']}; amp {s['amp']}; channels_last "
        f"{str(s['channels_last']).lower()}; median of {s['steps']} timed steps after {s['warmup']} warm-up; "
        f"epoch = {s['epoch_samples']} images, random data already on the device."),
        "",
        "| arch | batch size | mode | step (ms) | epoch (s) | images/s | signals overhead (% of epoch) "
        "| noise signals overhead (% of step, every step sampled) "
        f"| noise signals overhead (% of step, one step in {DEFAULT_GNS_EVERY}: deba train's default) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    clocks = sorted({o["noise_clock"] for o in result.get("overhead", []) if o.get("noise_clock")})
    if clocks:
        lines[2] += f" Noise signals overhead: median of {NOISE_REPEATS} interleaved ratios, timed in {', '.join(clocks)}."
    for r in result["records"]:
        o = over.get((r["arch"], r["batch_size"], r["mode"]))
        lines.append(f"| {r['arch']} | {r['batch_size']} | {r['mode']} | {_fmt(r['step_ms'])} | {_fmt(r['epoch_s'])} "
                     f"| {_fmt(r['images_per_s'], 0)} | {_overhead_cell(o['overhead_pct']) if o else '-'} "
                     f"| {_overhead_cell(o.get('noise_overhead_pct')) if o else '-'} "
                     f"| {_overhead_cell(_per_default(o.get('noise_overhead_pct'))) if o else '-'} |")
    sizes = sorted({r["batch_size"] for r in result["records"]})
    if result["records"]:
        lines += ["", "Seconds per epoch by batch size:", "",
                  "| arch | mode | " + " | ".join(f"B={b}" for b in sizes) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in sizes) + " |"]
        rows: dict[tuple[str, str], dict[int, float]] = {}
        for r in result["records"]:
            rows.setdefault((r["arch"], r["mode"]), {})[r["batch_size"]] = r["epoch_s"]
        for (arch, mode), by_b in rows.items():
            lines.append(f"| {arch} | {mode} | " + " | ".join(_fmt(by_b.get(b)) for b in sizes) + " |")
    if result.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Epoch time against batch size, one line per architecture and mode (the paper's Figure 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    archs = list(dict.fromkeys(r["arch"] for r in result["records"]))
    colors = {a: f"C{i % 10}" for i, a in enumerate(archs)}
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in result["records"]:
        series.setdefault((r["arch"], r["mode"]), []).append((r["batch_size"], r["epoch_s"]))
    for (arch, mode), pts in series.items():
        pts.sort()
        ax.plot([b for b, _ in pts], [t for _, t in pts], marker="o", color=colors[arch],
                linestyle="-" if mode == "eager" else "--", label=f"{arch} ({mode})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    sizes = sorted({r["batch_size"] for r in result["records"]})
    if sizes:
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(b) for b in sizes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"seconds per epoch ({result['settings']['epoch_samples']} images)")
    ax.set_title(f"Epoch time vs batch size, {result['machine']['device_name']}")
    ax.grid(True, which="both", alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = f"{os.fspath(path)}.tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def write_outputs(result: dict[str, Any], out: str | None = None, markdown_path: str | None = None,
                  plot_path: str | None = None) -> None:
    if out:
        write_json(out, result)
    if markdown_path:
        atomic_write_text(markdown_path, markdown(result))
    if plot_path:
        plot(result, plot_path)
