"""Where the steering material's real data lies (../shared beside the checkout); tests skip what needs it when
it is absent. Nothing from it is ever copied into the repository."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TOKENIZER = SHARED / "tokenizers" / "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
FINEWEB = SHARED / "corpus" / "fineweb_sample.jsonl.gz"
