#!/usr/bin/env bash
# 4xH100: the legal mode resumed from a random-weight checkpoint, HEAD (per-rank scoring batches) then 4ce7811,
# with TORCH_LOGS=recompiles: does anything compile after the warm-up, and how long do the evaluations take.
S=/tmp/rV; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1; R=$PWD
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $S/env.txt
python3 data/prepare_caseops.py --docs .carry/fineweb_sample.jsonl.gz --docs .carry/wikipedia_sample.jsonl.gz \
  --out /tmp/data --val-docs 800 --tokenizer .carry/caseops.model --workers 32 --quiet > $S/prepare.log 2>&1; st "prepare rc=$?"
mkdir -p /tmp/work
python3 - <<'PY' > $S/ckpt.txt 2>&1
import torch, train_gpt as tg
h = tg.read_hyperparameters(); torch.manual_seed(0); m = tg.GPT(h)
with torch.no_grad():
    for p in m.parameters(): p.add_(0.02 * torch.randn_like(p))
torch.save({"stage": "post_ema", "state": {k: v.detach().cpu() for k, v in m.state_dict().items()}}, "/tmp/work/final_model.pt")
print("ckpt ok")
PY
st "ckpt rc=$?"
ARTIFACT_LIMIT=40000000 TORCH_LOGS=recompiles GPU_CHECK_STEPS=legal timeout 420 bash tools/gpu_check.sh $S/new 4; st "new rc=$?"
mkdir -p /tmp/oldrepo && cp -r data tools .whl /tmp/oldrepo/ && cp .exp/tg_4ce7811.py /tmp/oldrepo/train_gpt.py
(cd /tmp/oldrepo && ARTIFACT_LIMIT=40000000 TORCH_LOGS=recompiles GPU_CHECK_STEPS=legal timeout 420 bash tools/gpu_check.sh $S/old 4); st "old rc=$?"
st ALLDONE
