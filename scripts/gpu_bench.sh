#!/usr/bin/env bash
# GPU figures for BENCHMARKS.md on a lent GPU machine (README: "GPU"), or the same steps
# on any machine with DEVICE=cpu. Prepare beside the repository first (no network there):
#   .whl/                        cp312 wheels the machine lacks (faiss-cpu, grpcio, protobuf,
#                                soxr, soundfile, espeakng-loader, phonemizer, dlinfo, ...)
#   runs/gpu_frontend/           `rasst port-frontend --out X`, then X/frontend moved here
#   runs/gpu_terms/train.txt     real terms for the 10K load glossary and the index sizes
#                                (a prefix of data/corpus/terms/train.txt; random vectors beyond)
# PARTS (default "encoder load rpc index"; add "tests" for the requires_cuda tests) picks steps.
# Results: $OUT/gpu_bench.tgz (every part's bench.json, bench.md and plots) and a log.
set -uo pipefail
OUT=${OUT:-bench_out/gpu}
DEVICE=${DEVICE:-cuda}
INDEX_SIZES=${INDEX_SIZES:-1000,10000,100000,1000000}
mkdir -p "$OUT"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
nvidia-smi -L 2>/dev/null || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

if [ ! -f data/corpus/terms/train.txt ] && [ -f runs/gpu_terms/train.txt ]; then
  mkdir -p data/corpus/terms && cp runs/gpu_terms/train.txt data/corpus/terms/train.txt
fi

# The shipped checkpoint with its front-end ported to PyTorch (CTranslate2's CUDA build
# needs cuBLAS 12; the model package itself is too large to carry).
CKPT=/tmp/rasst_gpu_ckpt
rm -rf "$CKPT"
$PY -m rasst port-frontend --out "$CKPT" --encoder runs/gpu_frontend || exit 1

# The GPU tests (skipped on machines without CUDA), on the ported model and the demo talk.
[[ " ${PARTS:-encoder load rpc index} " == *" tests "* ]] &&
  RASST_TEST_CHECKPOINT=$CKPT RASST_TEST_FRONTEND=runs/gpu_frontend timeout 300 $PY -m pytest -q -p no:cacheprovider -m requires_cuda tests/test_index.py \
    tests/test_whisper_torch.py > "$OUT/tests.log" 2>&1; tail -n 15 "$OUT/tests.log"

bench() {  # name, then rasst bench arguments; the archive is refreshed after each part
  local name=$1; shift
  echo "== $name: rasst bench $*"
  timeout "${PART_TIMEOUT:-240}" $PY -m rasst bench --checkpoint "$CKPT" --out "$OUT/parts/$name" "$@" \
    2>&1 | grep -v "^\[transformers\]\|faiss.loader\|swigfaiss\|embed terms" | tail -n 40
  tar czf "$OUT/gpu_bench.tgz" -C "$OUT" parts
}
# Most important first: a part cut off by the timeout leaves the earlier ones.
PARTS=" ${PARTS:-encoder load rpc index} "
if [[ $PARTS == *" encoder "* ]]; then
  bench encoder_$DEVICE --device "$DEVICE" --only encoder
  [ "$DEVICE" = cuda ] && bench encoder_cpu --device cpu --only encoder
fi
# WORKERS: one load part per encoder-worker count (0 = the server's auto choice), the
# first over STREAMS, the others over WORKER_STREAMS.
if [[ $PARTS == *" load "* ]]; then
  streams=${STREAMS:-1,8,32,64}
  for w in ${WORKERS:-0}; do
    bench load_${DEVICE}_w$w --device "$DEVICE" --only load --workers "$w" --streams "$streams" \
      --seconds "${SECONDS_PER_STREAM:-8}" --load-modes realtime,max
    streams=${WORKER_STREAMS:-$streams}
  done
fi
[[ $PARTS == *" rpc "* ]] && bench rpc_$DEVICE --device "$DEVICE" --only rpc ${RPC_ARGS:---quick}
[[ $PARTS == *" index "* ]] && RASST_FAISS_THREADS=$(nproc) bench index --only index \
  --index-sizes "$INDEX_SIZES"
ls -la "$OUT"
