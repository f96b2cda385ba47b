"""Public CaseOps export (Hugging Face dataset romeerp/parameter-golf-caseops-v1) -> the DATA_DIR layout.

    python data/download.py --out DATA_DIR [--train-shards N] [--copy]

Lists the dataset repository, picks its training shards, validation shards, validation byte sidecars and
SentencePiece model by name pattern, downloads them (Hugging Face cache; HF_TOKEN / HF_HUB_* variables
apply) and links them (or copies them, --copy) into:

    DATA_DIR/datasets/fineweb10B_sp8192/fineweb_train_NNNNNN.bin
    DATA_DIR/datasets/fineweb10B_sp8192/fineweb_val_NNNNNN.bin
    DATA_DIR/datasets/fineweb10B_sp8192/fineweb_val_bytes_NNNNNN.bin
    DATA_DIR/tokenizers/fineweb_8192_bpe.model

Shards are numbered from 0 in the order of the number in their repository names. Patterns: a .bin file
whose name has a "val"/"validation" part and a part starting with "byte" is a sidecar; other "val" .bin
files are validation tokens; "train" .bin files are training tokens; *.model is the tokenizer. If the
listing does not fit (nothing found, several candidate folders or tokenizers, sidecars that do not pair with
validation shards) the script stops and says why; --subdir and --tokenizer-file narrow the choice.
Requires huggingface_hub (pip install huggingface_hub). Run data/verify.py DATA_DIR afterwards.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data import shards  # noqa: E402

REPO_ID = "romeerp/parameter-golf-caseops-v1"
_NAME_PARTS_RE = re.compile(r"[^A-Za-z0-9]+")
_NUMBER_RE = re.compile(r"\d+")


class LayoutError(ValueError):
    """The repository listing does not match the expected export layout."""


@dataclass
class Plan:
    """Which repository files go where: (repository path, destination relative to DATA_DIR) pairs."""

    files: list[tuple[str, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def sources(self) -> list[str]:
        return [source for source, _ in self.files]


def _preview(listing: list[str], n: int = 15) -> str:
    shown = ", ".join(listing[:n])
    return f"[{shown}{', ...' if len(listing) > n else ''}] ({len(listing)} files)"


def classify(path: str) -> str | None:
    """'train', 'val', 'val_bytes' or 'tokenizer' for a repository file name, None for anything else."""
    name = posixpath.basename(path)
    if name.endswith(".model"):
        return "tokenizer"
    if not name.endswith(".bin"):
        return None
    parts = {p.lower() for p in _NAME_PARTS_RE.split(name[:-4]) if p}
    is_val = bool(parts & {"val", "valid", "validation"})
    is_train = "train" in parts
    if is_val and is_train:
        raise LayoutError(f"{path}: name says both train and val")
    if is_val:
        return "val_bytes" if any(p.startswith("byte") for p in parts) else "val"
    return "train" if is_train else None


def _shard_number(path: str) -> int:
    numbers = _NUMBER_RE.findall(posixpath.basename(path)[:-4])
    if not numbers:
        raise LayoutError(f"{path}: shard name has no number to order it by")
    return int(numbers[-1])


def _ordered(kind: str, paths: list[str]) -> list[tuple[int, str]]:
    folders = sorted({posixpath.dirname(p) for p in paths})
    if len(folders) > 1:
        raise LayoutError(f"{kind} shards found in several folders {folders}; choose one with --subdir")
    numbered = sorted((_shard_number(p), p) for p in paths)
    numbers = [n for n, _ in numbered]
    if len(set(numbers)) != len(numbers):
        raise LayoutError(f"{kind} shards with the same number: {[p for _, p in numbered]}")
    return numbered


def plan_layout(listing, train_shards: int | None = None, subdir: str | None = None,
                tokenizer: str | None = None) -> Plan:
    """Maps a repository file listing onto the DATA_DIR layout (pure; raises LayoutError).

    train_shards keeps only the first N training shards; subdir restricts the listing to one folder;
    tokenizer names the .model file when the listing has several."""
    listing = sorted(listing)
    if subdir:
        prefix = subdir.strip("/") + "/"
        listing = [p for p in listing if p.startswith(prefix)]
        if not listing:
            raise LayoutError(f"no files under {prefix!r} in the repository")
    groups: dict[str, list[str]] = {"train": [], "val": [], "val_bytes": [], "tokenizer": []}
    for path in listing:
        kind = classify(path)
        if kind:
            groups[kind].append(path)
    for kind, what in (("train", "training shards (*train*.bin)"), ("val", "validation shards (*val*.bin)"),
                       ("val_bytes", "validation byte sidecars (*val*bytes*.bin)"),
                       ("tokenizer", "tokenizer (*.model)")):
        if not groups[kind]:
            raise LayoutError(f"no {what} in the listing {_preview(listing)}")

    train = _ordered("training", groups["train"])
    val = _ordered("validation", groups["val"])
    side = _ordered("sidecar", groups["val_bytes"])
    if [n for n, _ in val] != [n for n, _ in side]:
        raise LayoutError(f"validation shards {[p for _, p in val]} and sidecars {[p for _, p in side]} "
                          "do not pair up by number")
    if train_shards is not None:
        if not 0 <= train_shards <= len(train):
            raise LayoutError(f"--train-shards {train_shards}: the repository has {len(train)} training shards")
        train = train[:train_shards]

    if tokenizer:
        if tokenizer not in groups["tokenizer"]:
            raise LayoutError(f"--tokenizer-file {tokenizer!r} not among {groups['tokenizer']}")
        model = tokenizer
    else:
        models = groups["tokenizer"]
        if len(models) > 1:
            models = [m for m in models if "8192" in posixpath.basename(m)] or models
        if len(models) > 1:
            raise LayoutError(f"several tokenizers {models}; choose one with --tokenizer-file")
        model = models[0]

    plan = Plan(counts={"train": len(train), "val": len(val), "val_bytes": len(side)})
    for kind, items in (("train", train), ("val", val), ("val_bytes", side)):
        for index, (_, path) in enumerate(items):
            plan.files.append((path, str(shards.DATASET_SUBDIR / shards.shard_name(kind, index))))
    plan.files.append((model, str(shards.TOKENIZER_RELPATH)))
    return plan


def apply_layout(plan: Plan, local_root, out, copy: bool = False, overwrite: bool = False) -> list[Path]:
    """Links (or copies) the planned files from `local_root` (a downloaded snapshot) into `out`.
    Existing fineweb_* files in the dataset folder that the plan does not produce (and a manifest.json
    left by prepare_caseops) are an error unless overwrite is set, in which case they are removed: stale
    shards would otherwise be trained on."""
    local_root, out = Path(local_root), Path(out)
    for source, _ in plan.files:
        if not (local_root / source).is_file():
            raise FileNotFoundError(f"{local_root / source}: downloaded file missing")
    dataset_dir = out / shards.DATASET_SUBDIR
    dataset_dir.mkdir(parents=True, exist_ok=True)
    (out / shards.TOKENIZER_RELPATH).parent.mkdir(parents=True, exist_ok=True)
    planned = {out / dest for _, dest in plan.files}
    stale = sorted(p for p in dataset_dir.iterdir() if p not in planned and
                   (p.name.startswith("fineweb_") or p.name == shards.MANIFEST_RELPATH.name))
    if stale and not overwrite:
        raise FileExistsError(f"{dataset_dir}: holds {len(stale)} other fineweb_* or manifest files "
                              f"(e.g. {stale[0].name}); pass --overwrite to remove them")
    for path in stale:
        path.unlink()
    written = []
    for source, dest in plan.files:
        src, dst = local_root / source, out / dest
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        if copy:
            shutil.copyfile(src, dst)
        else:
            os.symlink(os.path.abspath(src), dst)
        written.append(dst)
    return written


def import_hub():
    """huggingface_hub, imported on demand with an actionable error when it is missing."""
    try:
        import huggingface_hub
    except ImportError as exc:
        raise RuntimeError("data/download.py needs huggingface_hub: pip install huggingface_hub "
                           "(or rebuild the data with data/prepare_caseops.py)") from exc
    return huggingface_hub


def download(out, train_shards: int | None = None, repo: str = REPO_ID, revision: str | None = None,
             subdir: str | None = None, tokenizer: str | None = None, copy: bool = False,
             overwrite: bool = False, cache_dir: str | None = None) -> Plan:
    """Lists, plans, downloads and lays out the export; checks every shard header afterwards."""
    hub = import_hub()
    listing = hub.list_repo_files(repo, repo_type="dataset", revision=revision)
    plan = plan_layout(listing, train_shards, subdir, tokenizer)
    print(f"{repo}: {plan.counts['train']} train, {plan.counts['val']} val, {plan.counts['val_bytes']} "
          f"sidecar shard(s) + tokenizer -> {out}", file=sys.stderr)
    local = hub.snapshot_download(repo_id=repo, repo_type="dataset", revision=revision,
                                  allow_patterns=plan.sources(), cache_dir=cache_dir, max_workers=8)
    written = apply_layout(plan, local, out, copy=copy, overwrite=overwrite)
    for path in written:
        if path.suffix == ".bin":
            shards.read_header(path)
    return plan


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="DATA_DIR to lay the files out in")
    parser.add_argument("--train-shards", type=int, help="download only the first N training shards")
    parser.add_argument("--repo", default=REPO_ID, help="Hugging Face dataset repository")
    parser.add_argument("--revision", help="branch, tag or commit of the dataset repository")
    parser.add_argument("--subdir", help="only consider files under this repository folder")
    parser.add_argument("--tokenizer-file", help="repository path of the .model file, if there are several")
    parser.add_argument("--copy", action="store_true", help="copy files instead of symlinking the HF cache")
    parser.add_argument("--overwrite", action="store_true", help="remove other fineweb_* files in DATA_DIR")
    parser.add_argument("--cache-dir", help="Hugging Face cache folder (default: HF_HOME's)")
    args = parser.parse_args(argv)
    try:
        download(args.out, args.train_shards, args.repo, args.revision, args.subdir, args.tokenizer_file,
                 args.copy, args.overwrite, args.cache_dir)
    except (RuntimeError, ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"download: error: {exc}", file=sys.stderr)
        return 1
    print(f"done; check it with: python data/verify.py {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
