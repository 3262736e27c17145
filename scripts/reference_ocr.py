"""Reference for the text detector's parity test: onnxruntime (test-only, never in typoclip's
path) runs PP-OCRv4's detector on prepared inputs.

Usage: reference_ocr.py MODEL.onnx OUT_DIR IN.npy...   (each input [1,3,H,W] float32, as
typoclip prepares it) -> OUT_DIR/<stem>.prob.npy, the [1,1,H,W] probability map, and
OUT_DIR/timing.json when --bench N is given (seconds per image over N runs, same threads).
"""
import argparse
import json
import pathlib
import time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--bench", type=int, default=0)
    a = ap.parse_args()
    opts = ort.SessionOptions()
    if a.threads:
        opts.intra_op_num_threads = a.threads
        opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    xs = [np.load(p).astype(np.float32) for p in a.inputs]
    for p, x in zip(a.inputs, xs):
        y = sess.run(None, {name: x})[0]
        np.save(out / (pathlib.Path(p).name.removesuffix(".npy") + ".prob.npy"), y)
    if a.bench:
        for x in xs:
            sess.run(None, {name: x})
        t0 = time.perf_counter()
        for _ in range(a.bench):
            for x in xs:
                sess.run(None, {name: x})
        dt = (time.perf_counter() - t0) / (a.bench * len(xs))
        (out / "timing.json").write_text(json.dumps({"seconds_per_image": dt, "onnxruntime": ort.__version__}))


if __name__ == "__main__":
    main()
