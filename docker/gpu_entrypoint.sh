#!/usr/bin/env bash
# Start-up of the gpu image: serialize the DALI model with this container's DALI, build the TensorRT plan with
# this container's TensorRT on this GPU (once per TensorRT version), then hand over to tritonserver.
set -euo pipefail
REPO="${MODEL_REPOSITORY:-/models}"
DALI_WHEEL=/opt/tritonserver/backends/dali/wheel   # the dali backend's own DALI, when it ships one
if ! python3 -c "import nvidia.dali" 2>/dev/null && [ -d "$DALI_WHEEL" ]; then
  export PYTHONPATH="${PYTHONPATH}:${DALI_WHEEL}"
fi
python3 -m build_engines.dali_model --repository "$REPO"
PLAN="$REPO/classifier/1/model.plan"
STAMP="$PLAN.tensorrt-version"
TRT="$(python3 -c 'import tensorrt; print(tensorrt.__version__)')"
if [ ! -f "$PLAN" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$TRT" ]; then
  read -r PRECISION BATCH < <(python3 -c "import json; o=json.load(open('$REPO/serving.json'))['options']; print(o['precision'], o['max_batch_size'])")
  python3 -m build_engines.tensorrt --onnx "$REPO/classifier/model.onnx" --plan "$PLAN" \
    --precision "$PRECISION" --max-batch-size "$BATCH"
  echo "$TRT" > "$STAMP"
fi
exec tritonserver --model-repository="$REPO" "$@"
