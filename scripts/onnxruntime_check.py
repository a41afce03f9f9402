"""Cross-checks an exported rejector in onnxruntime, the reference ONNX runtime.

Usage: onnxruntime_check.py DIR, where DIR holds rejector.onnx, input.npy, legacy_probs.npy,
tch_outputs.npy and uses_legacy_probs (written by `cloud-expert check-export --out DIR`).
Exits non-zero when the largest absolute difference exceeds 1e-5.
"""
import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort

d = pathlib.Path(sys.argv[1])
onnx.checker.check_model(str(d / "rejector.onnx"))
sess = ort.InferenceSession(str(d / "rejector.onnx"), providers=["CPUExecutionProvider"])
feeds = {"input": np.load(d / "input.npy")}
if (d / "uses_legacy_probs").read_text().strip() == "true":
    feeds["legacy_probs"] = np.load(d / "legacy_probs.npy")
out = sess.run(None, feeds)[0]
ref = np.load(d / "tch_outputs.npy")
diff = float(np.max(np.abs(out.reshape(ref.shape) - ref)))
print(f"onnxruntime vs tch: max |diff| = {diff:.3e} over {ref.shape[0]} inputs")
sys.exit(0 if diff <= 1e-5 else 1)
