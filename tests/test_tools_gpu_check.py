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
