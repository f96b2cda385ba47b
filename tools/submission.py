#!/usr/bin/env python3
"""Build a record folder's submission.json (and optionally a README results table) from training logs alone.

Usage:
    python tools/submission.py LOG [LOG ...] --out-json submission.json
        [--readme-table README_results.md] [--name NAME] [--author A] [--dataset DESC] [--hardware HW]

Each LOG is the rank-0 log train_gpt.py writes to logs/<RUN_ID>.txt, one per seed. Every figure in the output is
read from those logs; nothing is typed by hand except the optional labels:
    --name      record name (default: the run ids' common prefix)
    --author    author, written as given (default: null)
    --dataset   dataset description (default: the logs' DATA_DIR)
    --hardware  a device name ("H100 SXM" -> "8xH100 SXM" for world size 8) or the full "8xH100 SXM", whose
                count must equal the logs' world size (default: world size x the log's device type, e.g. "8xcuda")

submission.json holds the mean and sample std of the final score over seeds, one entry per seed (scores, sizes,
steps, timings, throughput, memory, and for score-first TTT the chunks trained on and whether the evaluation
budget stopped that training early), the evaluation mode, leaderboard validity with the reason, and the rule
checks (training <= 600 s, evaluation phase <= 600 s, artifact <= 16,000,000 bytes), each as a boolean (null when
the logs cannot tell, e.g. a resumed run has no training lines) together with the figures behind it.

The tool stops with an error naming the log when a required line is missing or malformed (the run header,
`hparam seed`, `Total submission size`, `final_score`), when a log's own lines contradict each other, when one
file holds several runs (the logger appends), or when the logs disagree on what must be equal across seeds
(evaluation mode and validity, world size, device type, torch, attention backend, KERNELS choice, counted code bytes,
validation tokens) or repeat a seed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import statistics
import sys
from pathlib import Path

TRAIN_LIMIT_MS = 600_000     # SPEC §1: training <= 600 s wallclock
EVAL_LIMIT_S = 600.0         # SPEC §1: evaluation phase <= 600 s
ARTIFACT_LIMIT = 16_000_000  # SPEC §1: compressed model + counted code, decimal bytes

# The evaluation lines train_gpt.py writes, by log label -> key in the per-seed "scores".
SCORE_KEYS = {
    "pre-quantization post-ema": "pre_quant_post_ema",
    "post-ttt": "post_prequant_ttt",
    "quantized": "quantized",
    "quantized_sliding_window": "quantized_sliding_window",
    "quantized_ttt": "quantized_ttt",
}
NUM = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)"
PATTERNS = {  # one regex per line kind; each must match a whole line
    "header": r"run_id:(?P<run_id>.*) world_size:(?P<world_size>\d+) grad_accum_steps:(?P<grad_accum>\d+) "
              r"device:(?P<device>\S+) torch:(?P<torch>\S+) attention:(?P<attention>\S+)"
              r"(?: (?:kernels|mlp_kernel):(?P<kernels>\S+))?",  # mlp_kernel: the knob's name before 2026-11-26
    "hparam": r"hparam (?P<key>\w+):(?P<value>.*)",
    "val_tokens": r"val_tokens:(?P<n>\d+) byte_sidecar:(?P<sidecar>True|False)",
    "code_bytes": r"code_bytes source:(?P<source>\d+) counted:(?P<counted>\d+)",
    "model_params": r"model_params:(?P<n>\d+)",
    "resumed": r"resumed checkpoint:(?P<path>.*) stage:(?P<stage>\w+)",
    "stopping_early": r"stopping_early: wallclock_cap train_time: (?P<ms>\d+)ms step: (?P<step>\d+)/(?P<total>\d+)",
    "train_val": rf"(?P<step>\d+)/(?P<total>\d+) val_loss: (?P<loss>{NUM}) val_bpb: (?P<bpb>{NUM}) "
                 r"train_time: (?P<ms>\d+)ms",
    "throughput": r"throughput recurrence:(?P<looping>[01]) steps:(?P<steps>\d+) tok/s:(?P<tps>\d+)",
    "peak_memory": r"peak memory allocated: (?P<alloc>\d+) MiB reserved: (?P<reserved>\d+) MiB",
    "prequant_ttt_note": r"prequant_ttt: .*",
    "score": rf"(?P<label>{'|'.join(map(re.escape, SCORE_KEYS))}) val_loss:(?P<loss>{NUM}) val_bpb:(?P<bpb>{NUM}) "
             r"eval_time:(?P<ms>\d+)ms(?: mode:(?P<mode>\S+))? model:(?P<model>\S+) leaderboard_valid:(?P<valid>[01])",
    "serialized": r"Serialized model quantized\+(?P<compressor>\w+): (?P<bytes>\d+) bytes time:(?P<ms>\d+)ms",
    "total": r"Total submission size quantized\+(?P<compressor>\w+): (?P<bytes>\d+) bytes "
             r"limit:(?P<limit>\d+) zeroed_codes:(?P<zeroed>\d+)",
    "score_first_ttt": r"score_first_ttt chunks:(?P<chunks>\d+) adapted:(?P<adapted>\d+) .*",
    "score_first_ttt_stop": r"score_first_ttt: stopped adapting before training chunk (?P<chunk>\d+)/(?P<chunks>\d+) .*",
    "eval_phase": rf"eval_phase_time:(?P<s>{NUM})s limit:(?P<limit>{NUM})s",
    "final_score": rf"final_score source:(?P<source>\S+) val_bpb:(?P<bpb>{NUM}) model:(?P<model>\S+) "
                   r"leaderboard_valid:(?P<valid>[01])",
}
PATTERNS = {k: re.compile(v) for k, v in PATTERNS.items()}
SINGLE = ("header", "val_tokens", "code_bytes", "model_params", "resumed", "stopping_early", "peak_memory",
          "serialized", "total", "score_first_ttt", "score_first_ttt_stop", "eval_phase",
          "final_score")  # line kinds a single run writes at most once
REQUIRED = {"header": "run_id:... world_size:...", "total": "Total submission size ...",
            "final_score": "final_score source:..."}


class LogError(ValueError):
    """A log is missing a line, contradicts itself, or disagrees with the other seeds' logs."""


# ----------------------------------------------------------------------------------------------------
# One log -> one per-seed record


def _lines(path: Path) -> dict[str, list[re.Match]]:
    """Every recognised line of the log by kind (unrecognised lines, e.g. per-step training lines, are skipped)."""
    found: dict[str, list[re.Match]] = {k: [] for k in PATTERNS}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        for kind, pattern in PATTERNS.items():
            m = pattern.fullmatch(line.rstrip())
            if m:
                found[kind].append(m)
                break
    return found


def _finite(path: Path, what: str, text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise LogError(f"{path}: {what} is {text}, not a finite number")
    return value


def parse_log(path) -> dict:
    """Reads one rank-0 train_gpt.py log into the per-seed record that submission.json lists."""
    path = Path(path)
    if not path.is_file():
        raise LogError(f"{path}: no such log file")
    found = _lines(path)
    if len(found["header"]) > 1:
        raise LogError(f"{path}: holds {len(found['header'])} runs (train_gpt.py appends to logs/<RUN_ID>.txt); "
                       "keep only the run to submit, or rerun with a fresh RUN_ID")
    for kind, line in REQUIRED.items():
        if not found[kind]:
            raise LogError(f"{path}: missing the required `{line}` line (did the run finish?)")
    for kind in SINGLE:
        if len(found[kind]) > 1:
            raise LogError(f"{path}: {len(found[kind])} `{kind}` lines where one run writes one")
    one = {kind: (found[kind][0] if found[kind] else None) for kind in SINGLE}
    hp = {m["key"]: m["value"] for m in found["hparam"]}
    if "seed" not in hp:
        raise LogError(f"{path}: missing the required `hparam seed:...` line")
    header, total, final = one["header"], one["total"], one["final_score"]

    scores = {}
    for m in found["score"]:
        key = SCORE_KEYS[m["label"]]
        if key in scores:
            raise LogError(f"{path}: two `{m['label']}` score lines")
        scores[key] = m
    source = final["source"]
    if source not in SCORE_KEYS or SCORE_KEYS[source] not in scores:
        raise LogError(f"{path}: final_score names source `{source}`, but the log has no `{source} val_loss:...` line")
    src = scores[SCORE_KEYS[source]]
    final_bpb = _finite(path, "final_score val_bpb", final["bpb"])
    if float(src["bpb"]) != final_bpb or src["model"] != final["model"] or src["valid"] != final["valid"]:
        raise LogError(f"{path}: final_score ({final.group(0)!r}) does not match its source line ({src.group(0)!r})")
    valid = final["valid"] == "1"
    prequant = final["model"] == "prequant_ttt" or bool(found["prequant_ttt_note"]) or "post_prequant_ttt" in scores
    if valid and prequant:
        raise LogError(f"{path}: final_score says leaderboard_valid:1 after pre-quant TTT adapted on validation data")

    counted = int(one["code_bytes"]["counted"]) if one["code_bytes"] else None
    model_bytes = int(one["serialized"]["bytes"]) if one["serialized"] else None
    artifact = int(total["bytes"])
    if model_bytes is not None and counted is not None and model_bytes + counted != artifact:
        raise LogError(f"{path}: Total submission size {artifact} != model {model_bytes} + counted code {counted}")

    resumed = one["resumed"] is not None
    train_val = found["train_val"][-1] if found["train_val"] else None  # the last one closes training
    if not resumed and train_val is None:
        raise LogError(f"{path}: neither a final `STEP/ITERATIONS val_loss: ... train_time: ...ms` training line "
                       "nor a `resumed checkpoint:` line")
    if resumed and train_val is not None:
        raise LogError(f"{path}: has both a `resumed checkpoint:` line and training lines")
    sft, stop = one["score_first_ttt"], one["score_first_ttt_stop"]
    if stop is not None and sft is None:
        raise LogError(f"{path}: a `score_first_ttt: stopped adapting ...` line without the `score_first_ttt chunks:...` "
                       "summary line")
    tput = {m["looping"]: int(m["tps"]) for m in found["throughput"]}
    mem = one["peak_memory"]
    return {
        "log": path.name,
        "seed": int(hp["seed"]),
        "run_id": header["run_id"],
        "val_bpb": final_bpb,
        "val_loss": _finite(path, f"{source} val_loss", src["loss"]),
        "source": source,
        "model": final["model"],
        "eval_mode_tag": src["mode"],
        "leaderboard_valid": valid,
        "prequant_ttt": prequant,
        "scores": {key: float(m["bpb"]) for key, m in sorted(scores.items(), key=lambda kv: _score_order(kv[0]))},
        "artifact_bytes": artifact,
        "model_bytes": model_bytes,
        "code_bytes_counted": counted,
        "code_bytes_source": int(one["code_bytes"]["source"]) if one["code_bytes"] else None,
        "zeroed_codes": int(total["zeroed"]),
        "compressor": total["compressor"],
        "resumed": resumed,
        "resumed_from": one["resumed"]["path"] if resumed else None,
        "steps": int(train_val["step"]) if train_val else None,
        "stopped_by": None if resumed else ("wallclock_cap" if one["stopping_early"] else "iterations"),
        "train_time_ms": int(train_val["ms"]) if train_val else None,
        "max_wallclock_seconds": float(hp["max_wallclock_seconds"]) if "max_wallclock_seconds" in hp else None,
        "eval_phase_time_s": _finite(path, "eval_phase_time", one["eval_phase"]["s"]) if one["eval_phase"] else None,
        # Score-first TTT: chunks scored, chunks trained on, and whether EVAL_BUDGET_SECONDS stopped the training.
        "score_first_ttt_chunks": int(sft["chunks"]) if sft else None,
        "score_first_ttt_adapted": int(sft["adapted"]) if sft else None,
        "score_first_ttt_stopped_early": (stop is not None) if sft else None,
        "tokens_per_s_before_recurrence": tput.get("0"),
        "tokens_per_s_after_recurrence": tput.get("1"),
        "peak_memory_allocated_mib": int(mem["alloc"]) if mem else None,
        "peak_memory_reserved_mib": int(mem["reserved"]) if mem else None,
        # Run-wide facts, checked equal across seeds and then lifted out of the per-seed list by build_submission.
        "_run": {
            "world_size": int(header["world_size"]),
            "device_type": header["device"].split(":")[0],
            "torch": header["torch"],
            "attention": header["attention"],
            "kernels": header["kernels"],
            "val_tokens": int(one["val_tokens"]["n"]) if one["val_tokens"] else None,
            "byte_sidecar": one["val_tokens"]["sidecar"] == "True" if one["val_tokens"] else None,
            "model_params": int(one["model_params"]["n"]) if one["model_params"] else None,
            "data_dir": hp.get("data_dir"),
            "vocab_size": int(hp["vocab_size"]) if "vocab_size" in hp else None,
            "legal_flag": hp.get("legal") == "True",
            "eval_seq_len": int(hp["eval_seq_len"]) if "eval_seq_len" in hp else None,
            "eval_stride": int(hp["eval_stride"]) if "eval_stride" in hp else None,
            "prequant_ttt_epochs": int(hp["prequant_ttt_epochs"]) if "prequant_ttt_epochs" in hp else None,
        },
    }


def _score_order(key: str) -> int:
    return list(SCORE_KEYS.values()).index(key)


# ----------------------------------------------------------------------------------------------------
# Several seeds -> submission.json


def evaluation_mode(run: dict) -> str:
    """A short description, e.g. 'prequant_ttt + quantized sliding window (stride 64)' or
    'quantized + score-first TTT (legal)'."""
    r = run["_run"]
    final = {
        "pre-quantization post-ema": "pre-quantization",
        "post-ttt": "pre-quantization",
        "quantized": f"quantized ({r['eval_seq_len']}-token windows)",
        "quantized_sliding_window": f"quantized sliding window (stride {r['eval_stride']})",
        "quantized_ttt": "quantized + score-first TTT",
    }[run["source"]]
    mode = f"prequant_ttt + {final}" if run["prequant_ttt"] else final
    return mode + (" (legal)" if run["leaderboard_valid"] else " (not leaderboard-valid)")


def validity_note(run: dict, valid: bool) -> str:
    if run["prequant_ttt"]:
        epochs = run["_run"]["prequant_ttt_epochs"]
        return ("Not leaderboard-valid: pre-quant TTT adapts the weights on the validation stream"
                f"{f' ({epochs} AdamW epochs)' if epochs else ''} before scoring it (score-after-adapt), "
                "which violates the score-first rule: the model state used to predict a validation token must be "
                "determined only by data seen strictly before it (SPEC §1).")
    if not valid:
        return "Not leaderboard-valid: the logs' final_score lines say leaderboard_valid:0."
    if run["source"] == "quantized_ttt":
        return ("Leaderboard-valid under the score-first rule: score-first TTT scores each validation chunk with the "
                "current weights before training on it, and never trains on the last chunk; no validation token is "
                "predicted by a model that has seen it.")
    return "Leaderboard-valid: the quantized artifact is scored without adapting on validation data."


def _check_equal(runs: list[dict], what: str, get) -> object:
    values = {run["log"]: get(run) for run in runs}
    if len(set(map(repr, values.values()))) > 1:
        listing = ", ".join(f"{log}: {value}" for log, value in values.items())
        raise LogError(f"logs disagree on {what}, which must be equal across seeds ({listing})")
    return next(iter(values.values()))


def hardware_label(world_size: int, device_type: str, override: str | None) -> str:
    """'8xcuda' from the log alone; --hardware 'H100 SXM' -> '8xH100 SXM'; '8xH100 SXM' is checked against it."""
    if not override:
        return f"{world_size}x{device_type}"
    m = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(.+?)\s*", override)
    if m is None:
        return f"{world_size}x{override.strip()}"
    if int(m[1]) != world_size:
        raise LogError(f"--hardware {override!r} names {m[1]} devices, but the logs say world_size:{world_size}")
    return f"{world_size}x{m[2]}"


def _stat(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def build_submission(runs: list[dict], *, name: str | None = None, author: str | None = None,
                     dataset: str | None = None, hardware: str | None = None, date: str | None = None) -> dict:
    """submission.json's content from parse_log() records (one per seed)."""
    if not runs:
        raise LogError("no logs given")
    seeds = [run["seed"] for run in runs]
    if len(set(seeds)) != len(seeds):
        raise LogError("logs repeat a seed: " + ", ".join(f"{run['log']}: {run['seed']}" for run in runs))
    _check_equal(runs, "evaluation mode (final score source, model, pre-quant TTT)",
                 lambda r: (r["source"], r["model"], r["eval_mode_tag"], r["prequant_ttt"]))
    _check_equal(runs, "leaderboard validity", lambda r: r["leaderboard_valid"])
    shared = {key: _check_equal(runs, key.replace("_", " "), lambda r, k=key: r["_run"][k])
              for key in ("world_size", "device_type", "torch", "attention", "kernels", "val_tokens")}
    counted = _check_equal(runs, "counted code bytes", lambda r: r["code_bytes_counted"])
    first = runs[0]["_run"]

    bpbs = [run["val_bpb"] for run in runs]
    valid = all(run["leaderboard_valid"] for run in runs)
    run_ids = [run["run_id"] for run in runs]
    default_name = run_ids[0] if len(runs) == 1 else (os.path.commonprefix(run_ids).rstrip("_-. ") or run_ids[0])

    train_ms = [run["train_time_ms"] for run in runs]
    eval_s = [run["eval_phase_time_s"] for run in runs]
    artifacts = [run["artifact_bytes"] for run in runs]
    train_ok = None if None in train_ms else all(ms <= TRAIN_LIMIT_MS for ms in train_ms)
    eval_ok = None if None in eval_s else all(s <= EVAL_LIMIT_S for s in eval_s)
    artifact_ok = all(b <= ARTIFACT_LIMIT for b in artifacts)
    oks = (train_ok, eval_ok, artifact_ok)
    checks = {
        "train_time_within_600s": {
            "ok": train_ok, "limit_ms": TRAIN_LIMIT_MS, "max_train_time_ms": _stat(train_ms),
            "per_seed_train_time_ms": train_ms,
            "per_seed_max_wallclock_seconds": [run["max_wallclock_seconds"] for run in runs],
            **({"note": "null: a resumed run's log has no training lines"} if train_ok is None else {}),
        },
        "eval_phase_within_600s": {
            "ok": eval_ok, "limit_s": EVAL_LIMIT_S, "max_eval_phase_time_s": _stat(eval_s),
            "per_seed_eval_phase_time_s": eval_s,
        },
        "artifact_within_16000000_bytes": {
            "ok": artifact_ok, "limit_bytes": ARTIFACT_LIMIT, "max_artifact_bytes": max(artifacts),
            "per_seed_artifact_bytes": artifacts,
        },
        "all_ok": False if False in oks else (None if None in oks else True),
    }
    per_seed = [{k: v for k, v in run.items() if not k.startswith("_") and k not in ("prequant_ttt", "model")}
                for run in runs]
    return {
        "name": name or default_name,
        "author": author,
        "date": date or datetime.date.today().isoformat(),
        "val_bpb": statistics.fmean(bpbs),
        "val_bpb_std": statistics.stdev(bpbs) if len(bpbs) > 1 else None,
        "val_loss": statistics.fmean(run["val_loss"] for run in runs),
        "n_seeds": len(runs),
        "seeds": seeds,
        "leaderboard_valid": valid,
        "validity_note": validity_note(runs[0], valid),
        "evaluation_mode": evaluation_mode(runs[0]),
        "evaluation": {
            "final_source": runs[0]["source"], "model": runs[0]["model"], "prequant_ttt": runs[0]["prequant_ttt"],
            "score_first_ttt": runs[0]["source"] == "quantized_ttt", "legal_flag": first["legal_flag"],
            "eval_seq_len": first["eval_seq_len"], "eval_stride": first["eval_stride"],
        },
        "hardware": hardware_label(shared["world_size"], shared["device_type"], hardware),
        "world_size": shared["world_size"],
        "torch": shared["torch"],
        "attention": shared["attention"],
        "kernels": shared["kernels"],
        "dataset": dataset or first["data_dir"],
        "val_tokens": shared["val_tokens"],
        "byte_sidecar": first["byte_sidecar"],
        "vocab_size": first["vocab_size"],
        "model_params": first["model_params"],
        "bytes_total": max(artifacts),
        "bytes_code": counted,
        "checks": checks,
        "per_seed": per_seed,
        "generated_by": f"tools/submission.py from {len(runs)} training log(s): "
                        + ", ".join(run["log"] for run in runs),
    }


# ----------------------------------------------------------------------------------------------------
# README table


def _fmt(value, kind: str) -> str:
    if value is None:
        return "—"
    return {"int": f"{value:,.0f}", "ms": f"{value / 1000:.1f} s", "s": f"{value:.1f} s",
            "bpb": f"{value:.8f}"}[kind]


def _mean(values: list):
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known and len(known) == len(values) else None


def readme_table(sub: dict) -> str:
    """Markdown: one row per seed and a mean row (seed, steps, train time, eval phase time, artifact bytes,
    final val_bpb, validity)."""
    def validity(ok: bool) -> str:
        return "yes" if ok else ("no (pre-quant TTT)" if sub["evaluation"]["prequant_ttt"] else "no")

    rows = [f"Evaluation: {sub['evaluation_mode']} on {sub['hardware']} (final score: `{sub['evaluation']['final_source']}`).",
            *[f"Seed {s['seed']}: score-first TTT stopped adapting to stay inside EVAL_BUDGET_SECONDS; it trained on "
              f"{s['score_first_ttt_adapted']} of {s['score_first_ttt_chunks']} chunks (every chunk was scored)."
              for s in sub["per_seed"] if s["score_first_ttt_stopped_early"]],
            "",
            "| seed | steps | train time | eval phase time | artifact bytes | final val_bpb | leaderboard-valid |",
            "|---:|---:|---:|---:|---:|---:|:---|"]
    seeds = sub["per_seed"]
    for s in seeds:
        rows.append(f"| {s['seed']} | {_fmt(s['steps'], 'int')} | {_fmt(s['train_time_ms'], 'ms')} | "
                    f"{_fmt(s['eval_phase_time_s'], 's')} | {_fmt(s['artifact_bytes'], 'int')} | "
                    f"{_fmt(s['val_bpb'], 'bpb')} | {validity(s['leaderboard_valid'])} |")
    std = sub["val_bpb_std"]
    rows.append(f"| **mean** | {_fmt(_mean([s['steps'] for s in seeds]), 'int')} | "
                f"{_fmt(_mean([s['train_time_ms'] for s in seeds]), 'ms')} | "
                f"{_fmt(_mean([s['eval_phase_time_s'] for s in seeds]), 's')} | "
                f"{_fmt(_mean([s['artifact_bytes'] for s in seeds]), 'int')} | "
                f"**{_fmt(sub['val_bpb'], 'bpb')}**{'' if std is None else f' ± {std:.8f}'} | "
                f"{validity(sub['leaderboard_valid'])} |")
    return "\n".join(rows) + "\n"


# ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", help="rank-0 train_gpt.py logs (logs/<RUN_ID>.txt), one per seed")
    p.add_argument("--out-json", required=True, help="where to write submission.json")
    p.add_argument("--readme-table", help="also write a markdown results table here")
    p.add_argument("--name", help="record name (default: the run ids' common prefix)")
    p.add_argument("--author", help="author (default: null)")
    p.add_argument("--dataset", help="dataset description (default: the logs' DATA_DIR)")
    p.add_argument("--hardware", help="device name, e.g. 'H100 SXM', or '8xH100 SXM' (default: from the logs)")
    args = p.parse_args(argv)
    try:
        sub = build_submission([parse_log(log) for log in args.logs], name=args.name, author=args.author,
                               dataset=args.dataset, hardware=args.hardware)
    except LogError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    Path(args.out_json).write_text(json.dumps(sub, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
                                   encoding="utf-8")
    if args.readme_table:
        Path(args.readme_table).write_text(readme_table(sub), encoding="utf-8")
    std = "" if sub["val_bpb_std"] is None else f" ± {sub['val_bpb_std']:.8f}"
    print(f"{args.out_json}: {sub['n_seeds']} seed(s), val_bpb {sub['val_bpb']:.8f}{std}, "
          f"leaderboard_valid={sub['leaderboard_valid']}, checks all_ok={sub['checks']['all_ok']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
