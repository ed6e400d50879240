"""GFL.predict (eval mode: the inference path) against BN folded NCHW, the model as built, the ONNX export in
onnxruntime (decode and NMS included) and torchvision FCOS, interleaved, R-50 preset with random weights,
batch 1:  .venv/bin/python benchmarks/predict_paths.py [ROUNDS]"""
import sys

import gflnb  # noqa: F401  (first: the portable kernels are chosen before torch loads)
import torch  # noqa: E402
from gflnb.engine.benchmark import inference_setup, tv_infer, time_interleaved, med
from gflnb.engine.export import ort_predict_fn
from gflnb.model.fuse import fuse_for_inference
from gflnb.numerics.machine import describe, machine_info
print(describe(machine_info()), torch.__version__, torch.get_num_threads())
for shape in [(512, 512), (800, 1333)]:
    model, x, meta = inference_setup("gfl_r50_fpn_1x_coco", shape, path="plain")
    nchw = fuse_for_inference(model)  # folded, NCHW
    fns = {"predict (fast path)": lambda: model.predict(x, meta, rescale=False),
           "folded NCHW": lambda: nchw.predict(x, meta, rescale=False),
           "plain": lambda: model.predict(x, meta, rescale=False, fast=False)}
    fns["onnxruntime"] = ort_predict_fn(model, shape)
    fcos, _ = tv_infer("fcos", shape)
    fns["fcos"] = fcos
    t = time_interleaved(fns, int(sys.argv[1]) if len(sys.argv) > 1 else 5)
    f = med(t["fcos"])
    print(shape, {k: f"{med(v):.3f}s {med(v)/f:.2f}xFCOS" for k, v in t.items()}, flush=True)
