import json

import pytest
import torch

from deba import bench
from deba.cli import main
from deba.errors import DebaError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    paths = {"json": out / "b.json", "md": out / "b.md", "png": out / "b.png"}
    rc = main(["bench", "--arch", "tiny_cnn", "--batch-sizes", "8,16", "--device", "cpu", "--modes", "eager,graph",
               "--steps", "3", "--warmup", "1", "--epoch-samples", "1000", "--quiet", "--out", str(paths["json"]),
               "--markdown", str(paths["md"]), "--plot", str(paths["png"])])
    assert rc == 0
    return paths


def test_json_schema(bench_run):
    data = json.loads(bench_run["json"].read_text())
    assert data["schema_version"] == 1
    assert data["machine"]["device_name"].startswith("cpu") and data["machine"]["torch_version"] == torch.__version__
    assert data["settings"]["modes"] == ["eager"]  # graph skipped on the CPU, with a note
    assert any("graph mode skipped" in n for n in data["notes"])
    records = data["records"]
    assert [(r["arch"], r["batch_size"], r["mode"]) for r in records] == [("tiny_cnn", 8, "eager"),
                                                                         ("tiny_cnn", 16, "eager")]
    for r in records:
        assert r["device_name"] == data["machine"]["device_name"]
        assert r["steps"] == 1000 // r["batch_size"] and r["samples"] == 1000 and r["timed_steps"] == 3
        assert r["step_ms"] > 0
        assert r["epoch_s"] == pytest.approx(r["step_ms"] / 1000 * r["steps"])
        assert r["images_per_s"] == pytest.approx(r["batch_size"] / (r["step_ms"] / 1000))
        assert r["step_ms_p10"] <= r["step_ms"] <= r["step_ms_p90"]
    overhead = data["overhead"]
    assert [(o["arch"], o["batch_size"], o["mode"]) for o in overhead] == [("tiny_cnn", 8, "eager"),
                                                                          ("tiny_cnn", 16, "eager")]
    for o, r in zip(overhead, records):
        assert o["step_ms_plain"] == pytest.approx(r["step_ms"]) and o["end_epoch_ms"] > 0
        expected = (o["step_ms_signals"] - o["step_ms_plain"]) / 1000 * r["steps"] + o["end_epoch_ms"] / 1000
        assert o["overhead_s_per_epoch"] == pytest.approx(expected)
        assert o["overhead_pct"] == pytest.approx(100 * expected / r["epoch_s"])


def test_markdown_and_plot(bench_run):
    md = bench_run["md"].read_text()
    data = json.loads(bench_run["json"].read_text())
    assert "| arch | batch size | mode | step (ms) | epoch (s) |" in md
    for r in data["records"]:
        assert f"| tiny_cnn | {r['batch_size']} | eager | " in md
    assert "| tiny_cnn | eager | " in md and "B=8 | B=16" in md
    assert "graph mode skipped" in md
    assert bench_run["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_time_steps_counts_warmup_and_timed_calls():
    calls = []
    times = bench.time_steps(lambda x, y: calls.append(1), None, None, steps=4, warmup=3, device=torch.device("cpu"))
    assert len(calls) == 7 and len(times) == 4 and all(t >= 0 for t in times)


def test_cpu_defaults():
    s = bench.make_settings(device="cpu")
    assert s.archs == ["tiny_cnn", "resnet18"] and s.batch_sizes == [8, 16] and s.modes == ["eager"]
    s = bench.make_settings(archs=["mobilenet_v3"], batch_sizes=["32", 16, 32], device="cpu")
    assert s.archs == ["mobilenet_v3_large"] and s.batch_sizes == [16, 32]


def _err(capsys, argv):
    try:
        rc = main(["bench", "--device", "cpu", "--quiet", *argv])
    except SystemExit as e:  # argparse's own checks exit from the parser
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("deba bench: error: "), err
    return err


@pytest.mark.parametrize("argv, text", [
    (["--arch", "resnet19"], "unknown model 'resnet19'"),
    (["--arch", "tiny_cnn", "--batch-sizes", "8,abc"], "batch size must be an integer >= 1, got 'abc'"),
    (["--arch", "tiny_cnn", "--batch-sizes", "0"], "batch size must be an integer >= 1, got '0'"),
    (["--arch", "tiny_cnn", "--batch-sizes", "64", "--epoch-samples", "32"], "batch size 64 exceeds the epoch"),
    (["--arch", "tiny_cnn", "--modes", "fast"], "unknown mode 'fast'"),
    (["--arch", "tiny_cnn", "--modes", "graph"], "graph mode needs CUDA"),
    (["--arch", "tiny_cnn", "--steps", "0"], "steps must be an integer >= 1"),
    (["--arch", "tiny_cnn", "--device", "tpu9"], "device"),
    (["--amp", "fp8"], "argument --amp"),
])
def test_bad_input_one_line_exit_2(capsys, argv, text):
    assert text in _err(capsys, argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_cuda():
    with pytest.raises(DebaError, match="CUDA is not available"):
        bench.make_settings(device="cuda")
