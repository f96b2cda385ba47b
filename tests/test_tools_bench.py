"""tools/bench.py runs train_gpt's real step and sliding evaluation and prints its figures."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import child_env, run_torchrun

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(VOCAB_SIZE="64", NUM_LAYERS="4", MODEL_DIM="64", NUM_HEADS="2", NUM_KV_HEADS="1", LOOP_START="1",
            LOOP_END="2", PARALLEL_RESIDUAL_START="3", XSA_LAST_N="4", TRAIN_SEQ_LEN="64", EVAL_SEQ_LEN="64",
            EVAL_STRIDE="16", TRAIN_BATCH_TOKENS="4096", VAL_BATCH_TOKENS="4096", RUN_ID="bench_test")


def run_bench(tmp_path, *args, launcher: tuple[str, ...] = (), **env: str) -> str:
    """tools/bench.py at the tiny configuration in tmp_path (under `launcher`, e.g. torchrun), with `env` added; its
    stdout. A torchrun is run once more only after an abort at exit that followed `ranks_agree:`
    (conftest.run_torchrun), the last collective when no windows or TTT chunks are timed, as in the two-rank test."""
    run = run_torchrun([sys.executable, *launcher, str(ROOT / "tools" / "bench.py"), *args],
                       lambda r: bool(launcher) and re.search(r"^ranks_agree:", r.stdout, re.M) is not None,
                       env=child_env(**TINY, **env), cwd=tmp_path)
    run.check_returncode()
    return run.stdout


def test_bench_prints_train_and_eval_figures(tmp_path):
    """Both recurrence modes get a positive tokens/s, and the sliding evaluation times the asked windows."""
    out = run_bench(tmp_path, "--steps", "2", "--warmup", "1", "--windows", "40")
    rates = {int(m[1]): float(m[2]) for m in re.finditer(r"train recurrence:(\d) step_ms:\S+ tok/s:(\d+)", out)}
    assert set(rates) == {0, 1} and all(r > 0 for r in rates.values())
    assert re.search(r"sliding_eval windows:40 stride:16 time_ms:\d+", out)
    assert (tmp_path / "logs" / "bench_bench_test.txt").read_text() == out


def test_bench_logs_each_timed_loss_and_skips_eval(tmp_path):
    """One finite loss per timed step and mode; --windows 0 skips the evaluation timing."""
    out = run_bench(tmp_path, "--steps", "3", "--warmup", "1", "--windows", "0")
    losses = {int(m[1]): [float(v) for v in m[2].split()] for m in re.finditer(r"^losses recurrence:(\d) (.*)$", out, re.M)}
    assert set(losses) == {0, 1} and all(len(v) == 3 and all(0 < x < 10 for x in v) for v in losses.values())
    assert "sliding_eval" not in out


def test_bench_steps_0_times_the_evaluation_alone(tmp_path):
    """--steps 0 trains nothing (no step, no loss line) and still times the sliding evaluation."""
    out = run_bench(tmp_path, "--steps", "0", "--windows", "24")
    assert "train recurrence" not in out and "losses recurrence" not in out
    assert re.search(r"^bench .* steps:0 ", out, re.M)
    assert re.search(r"sliding_eval windows:24 stride:16 time_ms:\d+", out)


def test_bench_on_two_gloo_ranks_checks_that_the_ranks_agree(tmp_path):
    """Under torchrun (gloo, on the CPU even where a GPU is: two ranks need two) the bench trains with every
    collective of the optimizers and prints that both ranks end with the same weights."""
    out = run_bench(tmp_path, "--steps", "2", "--warmup", "1", "--windows", "0",
                    launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"), CUDA_VISIBLE_DEVICES="")
    assert re.search(r"^bench world_size:2 ", out, re.M)
    assert re.search(r"^ranks_agree:1$", out, re.M)


def test_kernel_categories():
    sys.path.insert(0, str(ROOT / "tools"))
    import bench

    assert bench.kernel_category("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma") == "attention"
    assert bench.kernel_category("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT") == "matmul"
    assert bench.kernel_category("fused_gemm_kernel") == bench.kernel_category("xsa_res_kernel") == "matmul"
    assert bench.kernel_category("triton_per_fused__fused_rms_norm_backward_15") == "compiled"
    assert bench.kernel_category("ncclDevKernel_AllReduce_Sum_f32") == "communication"
    assert bench.kernel_category("Memcpy HtoD (Pinned -> Device)") == "copy"
    assert bench.kernel_category("void at::native::vectorized_elementwise_kernel<4>") == "other"


def test_kernel_gaps_measure_idle_between_overlapping_kernels():
    """Gaps are counted from the latest end so far; overlapping kernels leave no gap."""
    sys.path.insert(0, str(ROOT / "tools"))
    import bench
    from types import SimpleNamespace as NS

    cuda, cpu = bench.torch.autograd.DeviceType.CUDA, bench.torch.autograd.DeviceType.CPU

    def ev(name, start, end, dev=cuda):
        return NS(name=name, device_type=dev, time_range=NS(start=start, end=end))

    prof = NS(events=lambda: [ev("a", 0, 10), ev("b", 5, 30), ev("c", 12, 20), ev("host", 30, 90, cpu),
                              ev("d", 40, 50), ev("e", 50, 60), ev("f", 75, 80)])
    assert bench.kernel_gaps(prof) == [(10, "b", "d"), (15, "e", "f")]


def test_profile_report_gives_time_and_launches_per_step():
    sys.path.insert(0, str(ROOT / "tools"))
    import bench
    from types import SimpleNamespace as NS

    cuda, cpu = bench.torch.autograd.DeviceType.CUDA, bench.torch.autograd.DeviceType.CPU
    evts = [NS(key="nvjet_a", device_type=cuda, self_device_time_total=600.0, count=4),
            NS(key="triton_per_fused_b", device_type=cuda, self_device_time_total=300.0, count=6),
            NS(key="host_op", device_type=cpu, self_device_time_total=999.0, count=1)]
    times = bench.kernel_times(NS(key_averages=lambda: evts))
    assert times == {"nvjet_a": (600.0, 4), "triton_per_fused_b": (300.0, 6)}
    lines = []
    bench.profile_report(lines.append, "recurrence:0", times, steps=2, wall_s=0.001)
    assert lines[0].startswith("profile recurrence:0 steps:2 ") and "gpu_busy_ms_per_step:0.5" in lines[0]
    assert "category:matmul ms_per_step:0.3 share:66.7%" in lines[1]
    kernel = [ln for ln in lines if "triton_per_fused_b" in ln][0]
    assert "kernel_ms_per_step:0.15" in kernel and "calls_per_step:3 " in kernel and "us_per_call:50.0" in kernel
    lines.clear()  # the sliding evaluation's profile: one run over the windows, times per run
    bench.profile_report(lines.append, "sliding_eval", times, steps=1, wall_s=0.001, unit="run")
    assert lines[0].startswith("profile sliding_eval runs:1 ") and "gpu_busy_ms_per_run:0.9" in lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_bench_attention_needs_cuda():
    """Without CUDA the attention micro-benchmark stops with a clear message (exit 2) instead of a traceback."""
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_attention.py")], capture_output=True, text=True)
    assert r.returncode == 2 and "CUDA is required" in r.stderr


def test_bench_times_prequant_ttt_chunks(tmp_path):
    """--ttt-chunks runs train_gpt's pre-quant TTT for one epoch on one chunk (compile), then on N, and prints the
    time per chunk of the second."""
    out = run_bench(tmp_path, "--steps", "1", "--warmup", "1", "--windows", "0", "--ttt-chunks", "3",
                    PREQUANT_TTT_CHUNK_TOKENS="256")
    assert len(re.findall(r"^prequant_ttt epoch:1/1 ", out, re.M)) == 2
    m = re.search(r"^prequant_ttt_bench chunks_per_rank:3 chunk_tokens:256 ms_per_chunk:(\S+)$", out, re.M)
    assert m and float(m[1]) > 0


def test_bench_refuses_more_ttt_chunks_than_the_data_has(tmp_path, tiny_data):
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "bench.py"), "--data-dir", str(tiny_data), "--steps", "1",
                          "--warmup", "0", "--windows", "0", "--ttt-chunks", "100000"], env=child_env(**TINY),
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode != 0 and "--ttt-chunks 100000: needs" in run.stderr and str(tiny_data) in run.stderr
