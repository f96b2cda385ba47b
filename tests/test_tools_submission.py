"""tools/submission.py: submission.json and the README table from train_gpt.py logs (stdlib only, fast)."""
from __future__ import annotations

import importlib.util
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
LEGAL, PIPELINE = FIXTURES / "gpu1_legal.txt", FIXTURES / "gpu1_pipeline.txt"
LEGAL_FULL = FIXTURES / "gpu1_legal_full.txt"

_spec = importlib.util.spec_from_file_location("submission", ROOT / "tools" / "submission.py")
sub = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sub)


def variant(tmp_path: Path, base: Path, name: str, seed: int, bpb: float, valid: int | None = None) -> Path:
    """A copy of a fixture log with another seed and final score (the final_score line and its source line)."""
    text = base.read_text()
    text = re.sub(r"(?m)^hparam seed:\d+$", f"hparam seed:{seed}", text)
    source = re.search(r"(?m)^final_score source:(\S+)", text)[1]
    for prefix in (rf"^{source} val_loss:\S+ val_bpb:", r"^final_score source:\S+ val_bpb:"):
        text = re.sub(rf"(?m)({prefix})\S+", lambda m: f"{m[1]}{bpb:.8f}", text)
    if valid is not None:
        text = re.sub(r"(?m)^((?:quantized\S*|final_score) .*leaderboard_valid:)[01]$", rf"\g<1>{valid}", text)
    path = tmp_path / name
    path.write_text(text)
    return path


def test_parse_legal_fixture():
    run = sub.parse_log(LEGAL)
    assert run["seed"] == 1337 and run["run_id"] == "gpu1_legal"
    assert run["val_bpb"] == 1.92884868 and run["source"] == "quantized_ttt" and run["leaderboard_valid"] is True
    assert run["scores"] == {"pre_quant_post_ema": 1.92927332, "quantized": 1.93142448,
                             "quantized_sliding_window": 1.93208647, "quantized_ttt": 1.92884868}
    assert (run["artifact_bytes"], run["model_bytes"], run["code_bytes_counted"]) == (15999042, 15973836, 25206)
    assert run["eval_phase_time_s"] == 278.4
    assert run["resumed"] is True and run["resumed_from"] == "final_model.pt"
    for key in ("steps", "train_time_ms", "tokens_per_s_before_recurrence", "tokens_per_s_after_recurrence",
                "peak_memory_allocated_mib"):
        assert run[key] is None
    assert run["_run"]["world_size"] == 1 and run["_run"]["torch"] == "2.11.0+cu130"
    assert run["_run"]["attention"] == "sdpa" and run["_run"]["data_dir"] == "/tmp/data"
    assert run["_run"]["kernels"] is None  # a log from before the kernel choice existed


@pytest.mark.parametrize("key", ["kernels", "mlp_kernel"])
def test_header_with_the_kernel_choice(tmp_path, key):
    """KERNELS is logged as kernels:, and was logged as mlp_kernel: when the knob was MLP_KERNEL."""
    log = tmp_path / "k.txt"
    log.write_text(LEGAL.read_text().replace("attention:sdpa", f"attention:flash_attn_4 {key}:triton", 1))
    run = sub.parse_log(log)
    assert (run["_run"]["attention"], run["_run"]["kernels"]) == ("flash_attn_4", "triton")


def test_parse_pipeline_fixture():
    run = sub.parse_log(PIPELINE)
    assert run["resumed"] is False and run["steps"] == 99 and run["train_time_ms"] == 122293
    assert run["stopped_by"] == "wallclock_cap" and run["max_wallclock_seconds"] == 132.0
    assert (run["tokens_per_s_before_recurrence"], run["tokens_per_s_after_recurrence"]) == (840379, 529637)
    assert (run["peak_memory_allocated_mib"], run["peak_memory_reserved_mib"]) == (44524, 45910)
    assert run["scores"]["post_prequant_ttt"] == 1.79575943 and run["scores"]["pre_quant_post_ema"] == 1.93441006
    assert run["source"] == "quantized_sliding_window" and run["val_bpb"] == 1.80404004
    assert run["leaderboard_valid"] is False and run["prequant_ttt"] is True
    assert (run["artifact_bytes"], run["model_bytes"], run["zeroed_codes"]) == (15974339, 15953977, 246211)


def test_parse_legal_full_fixture():
    """A whole LEGAL=1 run: training lines and the score-first TTT summary (57 chunks, the last never trained on)."""
    run = sub.parse_log(LEGAL_FULL)
    assert run["resumed"] is False and run["steps"] == 31 and run["train_time_ms"] == 29490
    assert run["source"] == "quantized_ttt" and run["val_bpb"] == 2.21389596 and run["leaderboard_valid"] is True
    assert run["eval_phase_time_s"] == 84.7 and run["artifact_bytes"] == 15975129
    assert (run["score_first_ttt_chunks"], run["score_first_ttt_adapted"]) == (57, 56)
    assert run["score_first_ttt_stopped_early"] is False
    assert sub.parse_log(LEGAL)["score_first_ttt_chunks"] is None  # older logs have no summary line
    assert sub.parse_log(PIPELINE)["score_first_ttt_stopped_early"] is None


def test_budget_stop_is_reported(tmp_path):
    """When EVAL_BUDGET_SECONDS stopped the adaptation, the per-seed record and the README table say so."""
    text = LEGAL_FULL.read_text()
    stop = ("score_first_ttt: stopped adapting before training chunk 31/57 to end inside EVAL_BUDGET_SECONDS=600 "
            "(every chunk is still scored)\n")
    text = re.sub(r"(?m)^score_first_ttt chunks:57 adapted:56 ", lambda m: stop + "score_first_ttt chunks:57 adapted:30 ",
                  text)
    log = tmp_path / "stopped.txt"
    log.write_text(text)
    run = sub.parse_log(log)
    assert (run["score_first_ttt_adapted"], run["score_first_ttt_stopped_early"]) == (30, True)
    table = sub.readme_table(sub.build_submission([run], date="2026-01-02"))
    assert "Seed 1337: score-first TTT stopped adapting" in table and "trained on 30 of 57 chunks" in table
    assert "stopped adapting" not in sub.readme_table(sub.build_submission([sub.parse_log(LEGAL_FULL)]))

    (tmp_path / "orphan.txt").write_text(re.sub(r"(?m)^score_first_ttt chunks:.*\n", "", text))
    with pytest.raises(sub.LogError, match="orphan.txt: a `score_first_ttt: stopped adapting"):
        sub.parse_log(tmp_path / "orphan.txt")


def test_single_legal_log():
    s = sub.build_submission([sub.parse_log(LEGAL)], date="2026-01-02")
    assert s["val_bpb"] == 1.92884868 and s["val_bpb_std"] is None and s["seeds"] == [1337]
    assert s["leaderboard_valid"] is True and "score-first" in s["validity_note"]
    assert s["evaluation_mode"] == "quantized + score-first TTT (legal)"
    assert s["hardware"] == "1xcuda" and s["dataset"] == "/tmp/data" and s["name"] == "gpu1_legal"
    c = s["checks"]
    assert c["train_time_within_600s"]["ok"] is None and c["all_ok"] is None  # resumed: training unknown
    assert c["eval_phase_within_600s"]["ok"] is True and c["eval_phase_within_600s"]["max_eval_phase_time_s"] == 278.4
    assert c["artifact_within_16000000_bytes"]["ok"] is True and s["bytes_total"] == 15999042


def test_two_seeds_mean_std_exact(tmp_path):
    a = variant(tmp_path, PIPELINE, "s1.txt", 1, 1.79551234)
    b = variant(tmp_path, PIPELINE, "s2.txt", 2, 1.80012345)
    s = sub.build_submission([sub.parse_log(a), sub.parse_log(b)], name="rec", author="me", dataset="FineWeb CaseOps",
                             hardware="H100 SXM")
    assert [p["seed"] for p in s["per_seed"]] == [1, 2]
    assert [p["val_bpb"] for p in s["per_seed"]] == [1.79551234, 1.80012345]
    assert s["val_bpb"] == statistics.fmean([1.79551234, 1.80012345])
    assert s["val_bpb"] == pytest.approx((1.79551234 + 1.80012345) / 2, abs=1e-15)
    assert s["val_bpb_std"] == statistics.stdev([1.79551234, 1.80012345])
    assert s["val_bpb_std"] == pytest.approx(abs(1.80012345 - 1.79551234) / 2 ** 0.5, rel=1e-12)
    assert s["leaderboard_valid"] is False and "score-first rule" in s["validity_note"]
    assert s["evaluation_mode"] == "prequant_ttt + quantized sliding window (stride 64) (not leaderboard-valid)"
    assert (s["name"], s["author"], s["dataset"], s["hardware"]) == ("rec", "me", "FineWeb CaseOps", "1xH100 SXM")
    assert s["checks"]["all_ok"] is True and s["checks"]["train_time_within_600s"]["max_train_time_ms"] == 122293
    assert "_run" not in s["per_seed"][0]


def test_checks_fail_on_figures(tmp_path):
    text = PIPELINE.read_text().replace("eval_phase_time:344.6s", "eval_phase_time:612.0s")
    text = text.replace("train_time: 122293ms", "train_time: 600450ms")
    log = tmp_path / "slow.txt"
    log.write_text(text)
    c = sub.build_submission([sub.parse_log(log)])["checks"]
    assert c["train_time_within_600s"]["ok"] is False and c["eval_phase_within_600s"]["ok"] is False
    assert c["all_ok"] is False


def test_missing_final_score_names_file(tmp_path):
    log = tmp_path / "no_final.txt"
    log.write_text("".join(l for l in LEGAL.read_text().splitlines(True) if not l.startswith("final_score")))
    with pytest.raises(sub.LogError, match=r"no_final\.txt.*final_score"):
        sub.parse_log(log)


def test_missing_total_size_names_file(tmp_path):
    log = tmp_path / "no_total.txt"
    log.write_text("".join(l for l in LEGAL.read_text().splitlines(True) if not l.startswith("Total submission")))
    with pytest.raises(sub.LogError, match=r"no_total\.txt.*Total submission size"):
        sub.parse_log(log)


def test_disagreeing_validity_raises(tmp_path):
    a = variant(tmp_path, LEGAL, "valid.txt", 1, 1.9288)
    b = variant(tmp_path, LEGAL, "invalid.txt", 2, 1.9290, valid=0)
    with pytest.raises(sub.LogError, match=r"validity.*valid\.txt.*invalid\.txt"):
        sub.build_submission([sub.parse_log(a), sub.parse_log(b)])


def test_disagreeing_mode_world_size_code_raise(tmp_path):
    legal, pipe = sub.parse_log(LEGAL), sub.parse_log(variant(tmp_path, PIPELINE, "pipe.txt", 5, 1.8))
    with pytest.raises(sub.LogError, match="evaluation mode"):
        sub.build_submission([legal, pipe])
    for old, new, what in (("world_size:1 ", "world_size:8 ", "world size"),
                           ("attention:sdpa", "attention:sdpa kernels:triton", "kernels"),
                           ("counted:25206", "counted:25207", "counted code bytes")):
        log = variant(tmp_path, LEGAL, "other.txt", 7, 1.93)
        text = log.read_text().replace(old, new)
        if what == "counted code bytes":  # keep the log self-consistent: total = model + counted
            text = text.replace("15999042 bytes", "15999043 bytes")
        log.write_text(text)
        with pytest.raises(sub.LogError, match=what):
            sub.build_submission([legal, sub.parse_log(log)])


def test_validity_false_if_any_seed_invalid(tmp_path):
    invalid = variant(tmp_path, LEGAL, "bad.txt", 3, 1.93, valid=0)
    s = sub.build_submission([sub.parse_log(invalid)])
    assert s["leaderboard_valid"] is False and s["per_seed"][0]["leaderboard_valid"] is False
    both = [sub.parse_log(variant(tmp_path, PIPELINE, f"p{i}.txt", i, 1.8 + i / 1000)) for i in (1, 2, 3)]
    assert sub.build_submission(both)["leaderboard_valid"] is False
    good = [sub.parse_log(variant(tmp_path, LEGAL, f"g{i}.txt", i, 1.92 + i / 1000)) for i in (1, 2, 3)]
    assert sub.build_submission(good)["leaderboard_valid"] is True


def test_self_contradicting_logs_raise(tmp_path):
    log = tmp_path / "mismatch.txt"
    log.write_text(LEGAL.read_text().replace("final_score source:quantized_ttt val_bpb:1.92884868",
                                             "final_score source:quantized_ttt val_bpb:1.90000000"))
    with pytest.raises(sub.LogError, match="mismatch.txt.*does not match"):
        sub.parse_log(log)
    log.write_text(LEGAL.read_text() * 2)
    with pytest.raises(sub.LogError, match="2 runs"):
        sub.parse_log(log)
    same = sub.parse_log(LEGAL)
    with pytest.raises(sub.LogError, match="repeat a seed"):
        sub.build_submission([same, same])


def test_hardware_label():
    assert sub.hardware_label(8, "cuda", None) == "8xcuda"
    assert sub.hardware_label(8, "cuda", "H100 SXM") == "8xH100 SXM"
    assert sub.hardware_label(8, "cuda", "8xH100 SXM") == "8xH100 SXM"
    with pytest.raises(sub.LogError, match="world_size:1"):
        sub.hardware_label(1, "cuda", "8xH100 SXM")


def test_cli_json_round_trip_and_readme_table(tmp_path):
    logs = [variant(tmp_path, LEGAL, f"seed{i}.txt", seed, bpb)
            for i, (seed, bpb) in enumerate([(1337, 1.92884868), (42, 1.93012345), (2025, 1.92791111)])]
    out, table = tmp_path / "submission.json", tmp_path / "README_results.md"
    rc = sub.main([*map(str, logs), "--out-json", str(out), "--readme-table", str(table), "--name", "legal",
                   "--hardware", "1xH100 SXM"])
    assert rc == 0
    loaded = json.loads(out.read_text())
    expected = sub.build_submission([sub.parse_log(p) for p in logs], name="legal", hardware="1xH100 SXM")
    assert loaded == expected
    assert loaded["val_bpb_std"] == statistics.stdev([1.92884868, 1.93012345, 1.92791111])
    rows = [l for l in table.read_text().splitlines() if l.startswith("| ") and not l.startswith("| seed")]
    assert len(rows) == 3 + 1
    assert [r.split("|")[1].strip() for r in rows] == ["1337", "42", "2025", "**mean**"]
    assert "1.92884868" in rows[0] and "15,999,042" in rows[0] and "278.4 s" in rows[0] and "yes" in rows[0]
    assert f"{statistics.fmean([1.92884868, 1.93012345, 1.92791111]):.8f}" in rows[-1]


def test_cli_error_exit(tmp_path):
    log = tmp_path / "cut.txt"
    log.write_text(LEGAL.read_text().split("final_score")[0])
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "submission.py"), str(log), "--out-json",
                        str(tmp_path / "s.json")], capture_output=True, text=True)
    assert r.returncode == 1 and "cut.txt" in r.stderr and "final_score" in r.stderr
    assert not (tmp_path / "s.json").exists()
