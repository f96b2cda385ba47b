"""tools/pack.py writes the packed record script, which runs like the source."""
import subprocess
import sys
from pathlib import Path

import train_gpt as tg

ROOT = Path(__file__).resolve().parent.parent


def test_pack_tool_writes_runnable_packed_script(tmp_path):
    """The written file is pack_source(train_gpt.py), counts itself, and fails on bad input like the source."""
    subprocess.run([sys.executable, str(ROOT / "tools" / "pack.py"), str(tmp_path)], check=True, capture_output=True)
    packed = tmp_path / "train_gpt.py"
    source = (ROOT / "train_gpt.py").read_text()
    assert packed.read_text() == tg.pack_source(source)
    assert tg.code_bytes(packed)[1] == packed.stat().st_size == tg.code_bytes(ROOT / "train_gpt.py")[1]
    env = {"VOCAB_SIZE": "x", "PATH": "/usr/bin:/bin"}
    runs = [subprocess.run([sys.executable, str(p)], env=env, capture_output=True, text=True, cwd=tmp_path)
            for p in (packed, ROOT / "train_gpt.py")]
    assert all(r.returncode != 0 for r in runs)
    assert runs[0].stderr.strip().splitlines()[-1] == runs[1].stderr.strip().splitlines()[-1]
    assert "VOCAB_SIZE='x'" in runs[0].stderr


def test_pack_tool_refuses_packed_input(tmp_path):
    """Packing an already packed script is an error, not a double wrapper."""
    once = tmp_path / "once"
    subprocess.run([sys.executable, str(ROOT / "tools" / "pack.py"), str(once)], check=True, capture_output=True)
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "pack.py"), str(tmp_path / "twice"),
                        "--source", str(once / "train_gpt.py")], capture_output=True, text=True)
    assert r.returncode != 0 and "already packed" in r.stderr


def test_pack_tool_checks_the_size_the_run_budgeted(tmp_path):
    """--check-log writes the copy only when its size is the `counted:` figure of the run's log."""
    counted = tg.code_bytes(ROOT / "train_gpt.py")[1]
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text(f"hparam seed:1\ncode_bytes source:1 counted:{counted}\n")
    bad.write_text(f"code_bytes source:1 counted:{counted + 11}\n")
    tool = [sys.executable, str(ROOT / "tools" / "pack.py")]
    subprocess.run(tool + [str(tmp_path / "ok"), "--check-log", str(good)], check=True, capture_output=True)
    assert (tmp_path / "ok" / "train_gpt.py").stat().st_size == counted
    r = subprocess.run(tool + [str(tmp_path / "no"), "--check-log", str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and f"budgeted {counted + 11} counted code bytes, but this copy has {counted}" in r.stderr
    assert not (tmp_path / "no" / "train_gpt.py").exists()
    (tmp_path / "none.txt").write_text("hparam seed:1\n")
    r = subprocess.run(tool + [str(tmp_path / "no"), "--check-log", str(tmp_path / "none.txt")], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "expected one `code_bytes source:N counted:M` value" in r.stderr
