"""Compares the per-step training losses of tools/bench.py logs (same SEED and data, different code versions).

    python tools/compare_losses.py REFERENCE.txt OTHER.txt [MORE.txt ...]

For each recurrence mode prints, for every other log against the reference, the mean and the largest absolute
loss difference over the timed steps and the difference of the last step. Two runs of one version give the
run-to-run noise that a changed version's differences are judged against.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

LOSSES = re.compile(r"^losses recurrence:(\d) (.*)$", re.M)


def read_losses(path: Path) -> dict[int, list[float]]:
    found = {int(m[1]): [float(v) for v in m[2].split()] for m in LOSSES.finditer(path.read_text())}
    if not found:
        raise ValueError(f"{path}: no 'losses recurrence:' lines (is it a tools/bench.py log?)")
    return found


def compare(ref: list[float], other: list[float]) -> dict[str, float]:
    if len(ref) != len(other):
        raise ValueError(f"step counts differ: {len(ref)} vs {len(other)}")
    diffs = [abs(a - b) for a, b in zip(ref, other)]
    return dict(mean_abs=sum(diffs) / len(diffs), max_abs=max(diffs), last=other[-1] - ref[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference", type=Path)
    ap.add_argument("others", type=Path, nargs="+")
    args = ap.parse_args(argv)
    try:
        ref = read_losses(args.reference)
        for path in args.others:
            other = read_losses(path)
            for mode in sorted(ref):
                if mode not in other:
                    raise ValueError(f"{path}: no losses for recurrence:{mode}")
                c = compare(ref[mode], other[mode])
                print(f"recurrence:{mode} reference:{args.reference.name} other:{path.name} steps:{len(ref[mode])} "
                      f"mean_abs_diff:{c['mean_abs']:.4f} max_abs_diff:{c['max_abs']:.4f} last_step_diff:{c['last']:+.4f}")
    except ValueError as e:
        print(f"compare_losses: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
