"""tools/gpu_check.sh refuses an unknown step before it installs, builds data or starts anything."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_unknown_step_is_refused_before_any_work(tmp_path):
    run_dir = tmp_path / "runs"
    run = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), str(run_dir), "1"], cwd=tmp_path,
                         env=os.environ | {"GPU_CHECK_STEPS": "pipeline legal_ful"}, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2
    assert "GPU_CHECK_STEPS: unknown step 'legal_ful'" in run.stderr and "legal_full" in run.stderr
    assert not run_dir.exists()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_each_invocation_copies_only_its_own_run(tmp_path):
    """The logger appends to logs/<RUN_ID>.txt, and the work directory outlives an invocation: a second invocation
    must copy a log of its own run only. python3 and nvidia-smi are stand-ins that append one line per run."""
    bin_dir, work = tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text('#!/usr/bin/env bash\ncase "$*" in *train_gpt.py*) mkdir -p logs; '
                                     'echo "run $TAG" >> "logs/$RUN_ID.txt";; esac\n')
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "GPU_CHECK_STEPS": "pipeline",
                        "GPU_CHECK_WORK": str(work)}
    for tag in ("first", "second"):
        run = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), str(tmp_path / tag), "1"], cwd=ROOT,
                             env=env | {"TAG": tag}, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert (tmp_path / tag / "gpu1_pipeline.txt").read_text() == f"run {tag}\n"
