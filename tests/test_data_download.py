"""File-layout logic of data/download.py, on fake repository listings (no network)."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data import download  # noqa: E402
from data.download import LayoutError, plan_layout  # noqa: E402

DS = "datasets/fineweb10B_sp8192"


def listing(n_train=3, n_val=2, folder="datasets/fineweb10B_sp8192_caseops", extra=()):
    files = [f"{folder}/fineweb_train_{i:06d}.bin" for i in range(n_train)]
    files += [f"{folder}/fineweb_val_{i:06d}.bin" for i in range(n_val)]
    files += [f"{folder}/fineweb_val_bytes_{i:06d}.bin" for i in range(n_val)]
    files += ["tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model", "README.md",
              ".gitattributes", "tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.vocab"]
    return files + list(extra)


def test_plan_maps_names():
    plan = plan_layout(listing())
    dest = dict(plan.files)
    src = "datasets/fineweb10B_sp8192_caseops"
    assert dest[f"{src}/fineweb_train_000002.bin"] == f"{DS}/fineweb_train_000002.bin"
    assert dest[f"{src}/fineweb_val_000001.bin"] == f"{DS}/fineweb_val_000001.bin"
    assert dest[f"{src}/fineweb_val_bytes_000000.bin"] == f"{DS}/fineweb_val_bytes_000000.bin"
    assert dest["tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"] == \
        "tokenizers/fineweb_8192_bpe.model"
    assert len(plan.files) == 3 + 2 + 2 + 1
    assert plan.counts == {"train": 3, "val": 2, "val_bytes": 2}


def test_plan_other_naming_and_numbering():
    files = ["data/train-00010.bin", "data/train-00002.bin", "data/val-7.bin", "data/val_bytes-7.bin",
             "tok.model"]
    dest = dict(plan_layout(files).files)
    assert dest["data/train-00002.bin"] == f"{DS}/fineweb_train_000000.bin"  # ordered by number
    assert dest["data/train-00010.bin"] == f"{DS}/fineweb_train_000001.bin"
    assert dest["data/val-7.bin"] == f"{DS}/fineweb_val_000000.bin"
    assert dest["data/val_bytes-7.bin"] == f"{DS}/fineweb_val_bytes_000000.bin"


def test_plan_train_shards_subset():
    plan = plan_layout(listing(n_train=80), train_shards=10)
    trains = [d for _, d in plan.files if "train" in d]
    assert trains[-1] == f"{DS}/fineweb_train_000009.bin" and len(trains) == 10
    assert plan_layout(listing(), train_shards=0).counts["train"] == 0
    with pytest.raises(LayoutError, match="has 3 training shards"):
        plan_layout(listing(), train_shards=4)


@pytest.mark.parametrize("files, message", [
    ([f for f in listing() if "train" not in f], "no training shards"),
    ([f for f in listing() if "bytes" not in f], "no validation byte sidecars"),
    ([f for f in listing() if "val_0" not in f], r"no validation shards \(\*val\*.bin\)"),
    ([f for f in listing() if not f.endswith(".model")], "no tokenizer"),
    ([f for f in listing() if f != "datasets/fineweb10B_sp8192_caseops/fineweb_val_bytes_000001.bin"],
     "do not pair up"),
    (listing() + [f"datasets/sp1024/fineweb_train_{i:06d}.bin" for i in range(2)], "several folders"),
    (listing() + ["tokenizers/other.model", "tokenizers/fineweb_8192_other.model"], "several tokenizers"),
    (listing() + ["datasets/fineweb10B_sp8192_caseops/fineweb_train.bin"], "no number"),
    (["README.md"], "no training shards"),
])
def test_plan_rejects_unexpected_listings(files, message):
    with pytest.raises(LayoutError, match=message):
        plan_layout(files)


def test_plan_subdir_and_tokenizer_choice():
    files = listing() + [f"datasets/sp1024/fineweb_train_{i:06d}.bin" for i in range(2)]
    files += ["datasets/sp1024/fineweb_val_000000.bin", "datasets/sp1024/fineweb_val_bytes_000000.bin",
              "tokenizers/other.model"]
    plan = plan_layout([f for f in files if not f.startswith("tokenizers/")] + ["datasets/sp1024/x.model"],
                       subdir="datasets/sp1024")
    assert plan.counts == {"train": 2, "val": 1, "val_bytes": 1}
    plan = plan_layout(listing(extra=["tokenizers/other.model"]), tokenizer="tokenizers/other.model")
    assert dict(plan.files)["tokenizers/other.model"] == "tokenizers/fineweb_8192_bpe.model"
    with pytest.raises(LayoutError, match="no files under"):
        plan_layout(files, subdir="nothing/here")


def _fake_snapshot(root, files):
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())


@pytest.mark.parametrize("copy", [False, True])
def test_apply_layout(tmp_path, copy):
    files = listing()
    _fake_snapshot(tmp_path / "snap", files)
    plan = plan_layout(files)
    out = tmp_path / "out"
    written = download.apply_layout(plan, tmp_path / "snap", out, copy=copy)
    assert len(written) == len(plan.files)
    model = out / "tokenizers" / "fineweb_8192_bpe.model"
    assert model.read_bytes() == b"tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
    assert model.is_symlink() != copy
    # Re-running is idempotent; a smaller plan leaves stale shards behind unless --overwrite.
    download.apply_layout(plan, tmp_path / "snap", out, copy=copy)
    smaller = plan_layout(files, train_shards=1)
    with pytest.raises(FileExistsError, match="fineweb_train_000001.bin"):
        download.apply_layout(smaller, tmp_path / "snap", out, copy=copy)
    download.apply_layout(smaller, tmp_path / "snap", out, copy=copy, overwrite=True)
    assert sorted(p.name for p in (out / DS).glob("fineweb_train_*")) == ["fineweb_train_000000.bin"]


def test_apply_layout_missing_download(tmp_path):
    plan = plan_layout(listing())
    with pytest.raises(FileNotFoundError, match="downloaded file missing"):
        download.apply_layout(plan, tmp_path, tmp_path / "out")


def test_missing_huggingface_hub(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    with pytest.raises(RuntimeError, match="pip install huggingface_hub"):
        download.import_hub()
    assert download.main(["--out", "/tmp/unused-download-dir"]) == 1
    assert "pip install huggingface_hub" in capsys.readouterr().err


def test_apply_layout_refuses_leftover_manifest(tmp_path):
    files = listing()
    _fake_snapshot(tmp_path / "snap", files)
    manifest = tmp_path / "out" / DS / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{}")
    with pytest.raises(FileExistsError, match="manifest"):
        download.apply_layout(plan_layout(files), tmp_path / "snap", tmp_path / "out")
    download.apply_layout(plan_layout(files), tmp_path / "snap", tmp_path / "out", overwrite=True)
    assert not manifest.exists()
