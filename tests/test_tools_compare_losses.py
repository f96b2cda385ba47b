"""tools/compare_losses.py: per-step loss differences between bench logs."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import compare_losses  # noqa: E402


def write(path: Path, rec0: str, rec1: str) -> Path:
    path.write_text(f"bench world_size:1\ntrain recurrence:0 step_ms:1\nlosses recurrence:0 {rec0}\n"
                    f"losses recurrence:1 {rec1}\n")
    return path


def test_compare_values():
    c = compare_losses.compare([4.0, 3.5, 3.0], [4.1, 3.5, 2.8])
    assert abs(c["mean_abs"] - 0.1) < 1e-12 and abs(c["max_abs"] - 0.2) < 1e-12 and abs(c["last"] + 0.2) < 1e-12


def test_cli_prints_each_mode_and_rejects_bad_logs(tmp_path):
    ref = write(tmp_path / "a.txt", "5.0 4.0", "3.0 2.0")
    other = write(tmp_path / "b.txt", "5.5 4.0", "3.0 2.25")
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "compare_losses.py"), str(ref), str(other)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["recurrence:0 reference:a.txt other:b.txt steps:2 mean_abs_diff:0.2500 max_abs_diff:0.5000 "
                   "last_step_diff:+0.0000",
                   "recurrence:1 reference:a.txt other:b.txt steps:2 mean_abs_diff:0.1250 max_abs_diff:0.2500 "
                   "last_step_diff:+0.2500"]
    (tmp_path / "c.txt").write_text("no losses here\n")
    short = write(tmp_path / "d.txt", "5.0", "3.0")
    for bad, msg in [(tmp_path / "c.txt", "no 'losses recurrence:' lines"), (short, "step counts differ")]:
        r = subprocess.run([sys.executable, str(ROOT / "tools" / "compare_losses.py"), str(ref), str(bad)],
                           capture_output=True, text=True)
        assert r.returncode == 2 and msg in r.stderr
