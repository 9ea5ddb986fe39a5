#!/usr/bin/env bash
# The semi-supervised / label-free paper table (issue 13) on a GPU, as one prepared run.
#
#   OUT=some/folder bash bench/gpu_paper_ssl.sh
#
# Run A: the six settings of the issue (label-free, 100 labels, 1 %, 5 %, 25 %, 100 %) with
# self-training (pseudo-labels from confident SQ assignments) and NT-Xent on a projection head
# over the last hidden layer. Run B: the same two hardest settings without either (the encoder
# of the previous release), for the side-by-side effect. Every encoder gets the same
# wall-clock budget; the test set chooses nothing (early stopping on the validation split).
# Partial results are written after every setting, so a run cut short still reports.
#
# PSEUDO replaces run A's pseudo-label source, e.g. the manifold teacher that the CPU runs
# measured best (README): PSEUDO='{"source": "manifold", "start_epoch": 5, "every": 10}'
# (each teaching is one UMAP, about 75 s on 60,000 rows whatever the GPU: single-threaded for
# a seeded, repeatable result; leave TIMEOUT_A room for them). FRACTIONS / COUNTS pick the
# settings of run A; SKIP_B=1 skips run B.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-bench/results}"
BUDGET="${BUDGET:-45}"
mkdir -p "$OUT"
PY="${PY:-python3}"
"$PY" -c "import torch, numpy, sklearn, numba; print('torch', torch.__version__, 'numpy', numpy.__version__, 'numba', numba.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
common=(--epochs 300 --batch-size 512 --patience 10 --lr-plateau 0.3 --device "${DEVICE:-cuda}" ${EXTRA:-}
        --encoder-max-seconds "$BUDGET" --no-plots --quiet --cache-dir '')
timeout "${TIMEOUT_A:-400}" "$PY" bench/paper_table.py "${common[@]}" \
    --fractions ${FRACTIONS:-0 0.01 0.05 0.25 1.0} --label-counts ${COUNTS:-100} \
    --selfsup-space hidden --pseudo-labels "${PSEUDO:-{\"start_epoch\": 5, \"keep\": 0.5\}}" \
    --out "$OUT/paper_table_ssl_gpu.json" 2>&1 | grep -v Warning
[ "${SKIP_B:-0}" = 1 ] && exit 0
timeout "${TIMEOUT_B:-150}" "$PY" bench/paper_table.py "${common[@]}" \
    --fractions 0 --label-counts 100 \
    --out "$OUT/paper_table_ssl_gpu_baseline.json" 2>&1 | grep -v Warning
