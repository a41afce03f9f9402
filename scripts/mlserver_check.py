"""Checks that a running MLServer really serves a cloud-expert model version.

Run with the MLServer virtualenv's python (it uses the gRPC stubs that ship with mlserver):

    .venv-mlserver/bin/python scripts/mlserver_check.py \
        --grpc 127.0.0.1:18081 --model digits --version-dir bench-out/repo/digits/1

Starts nothing. Waits until the model is ready, sends 5 random inputs over
inference.GRPCInferenceService/ModelInfer (raw_input_contents, like a v2 client) and
compares the returned probabilities against an independent pure-numpy forward pass
of the same weights. Prints OK, or exits non-zero.
"""

import argparse
import json
import os
import struct
import sys
import time

import grpc
import numpy as np
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc as pb_grpc


def read_safetensors(path):
    """Minimal safetensors reader (F32 only), independent of the runtime's loader."""
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(buf[8 + n + a : 8 + n + b], dtype="<f4").reshape(info["shape"])
    return out


def reference_probs(version_dir, x):
    """Straightforward (loop-based for convs) float32 forward, as in cloud-expert/src/nets.rs."""
    meta = json.load(open(os.path.join(version_dir, "expert.json")))
    w = read_safetensors(os.path.join(version_dir, "expert.safetensors"))
    h = (x - w["norm_mean"]) * w["norm_inv_std"]
    if meta["arch"]["type"] == "cnn":
        h = h.reshape([-1] + list(meta["input_shape"]))
        i = 0
        while f"conv{i}.weight" in w:
            k, bias = w[f"conv{i}.weight"], w[f"conv{i}.bias"]
            n, c, hh, ww = h.shape
            p = np.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)))
            o = np.zeros((n, k.shape[0], hh, ww), np.float32)
            for dy in range(3):
                for dx in range(3):
                    o += np.einsum("nchw,oc->nohw", p[:, :, dy : dy + hh, dx : dx + ww], k[:, :, dy, dx])
            o = np.maximum(o + bias[None, :, None, None], 0)
            h2, w2 = hh // 2, ww // 2
            h = o[:, :, : 2 * h2, : 2 * w2].reshape(n, -1, h2, 2, w2, 2).max(axis=(3, 5))
            i += 1
        h = h.reshape(h.shape[0], -1)
    i = 0
    while f"fc{i}.weight" in w:
        h = np.maximum(h @ w[f"fc{i}.weight"].T + w[f"fc{i}.bias"], 0)
        i += 1
    raw = h @ w["head.weight"].T + w["head.bias"]
    if meta.get("single_score", False):
        with np.errstate(over="ignore"):
            p1 = 1 / (1 + np.exp(-2 * raw[:, 0]))
        return np.stack([1 - p1, p1], axis=1).astype(np.float32)
    e = np.exp(raw - raw.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpc", required=True, help="HOST:PORT of MLServer's gRPC endpoint")
    ap.add_argument("--model", required=True)
    ap.add_argument("--version-dir", required=True)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    ap.add_argument("--rows", type=int, default=5)
    ap.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args()

    meta = json.load(open(os.path.join(args.version_dir, "expert.json")))
    shape = [int(v) for v in meta["input_shape"]]
    k = 2 if meta.get("single_score", False) else int(meta["num_classes"])

    channel = grpc.insecure_channel(args.grpc)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    t0 = time.monotonic()
    while True:
        try:
            if stub.ModelReady(pb.ModelReadyRequest(name=args.model), timeout=2).ready:
                break
        except grpc.RpcError:
            pass
        if time.monotonic() - t0 > args.timeout:
            sys.exit(f"mlserver_check: model {args.model} not ready at {args.grpc} after {args.timeout}s")
        time.sleep(0.2)
    waited = time.monotonic() - t0

    rng = np.random.default_rng(0)
    # Digits-like pixel values plus a few wild ones.
    x = rng.uniform(0, 16, size=[args.rows] + shape).astype(np.float32)
    x[0] = rng.normal(0, 50, size=shape)
    req = pb.ModelInferRequest(
        model_name=args.model,
        id="mlserver-check",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=x.shape)],
        raw_input_contents=[x.astype("<f4").tobytes()],
    )
    resp = stub.ModelInfer(req, timeout=30)
    # A second request with typed contents (fp32_contents) and the flat [rows, d] shape.
    req2 = pb.ModelInferRequest(
        model_name=args.model,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="input",
                datatype="FP32",
                shape=[args.rows, int(np.prod(shape))],
                contents=pb.InferTensorContents(fp32_contents=x.reshape(-1).tolist()),
            )
        ],
    )
    resp2 = stub.ModelInfer(req2, timeout=30)

    want = reference_probs(args.version_dir, x.reshape(args.rows, -1))
    for label, r in (("raw", resp), ("typed", resp2)):
        assert len(r.outputs) == 1, r.outputs
        out = r.outputs[0]
        assert out.name == "probabilities", out.name
        assert out.datatype == "FP32", out.datatype
        assert list(out.shape) == [args.rows, k], list(out.shape)
        if r.raw_output_contents:
            got = np.frombuffer(r.raw_output_contents[0], dtype="<f4")
        else:
            got = np.array(out.contents.fp32_contents, dtype=np.float32)
        got = got.reshape(args.rows, k)
        err = float(np.abs(got - want).max())
        if err > args.tol:
            sys.exit(f"mlserver_check: {label} request: max |diff| {err:.3g} > {args.tol}")
        print(f"mlserver_check: {label} request: max |diff| {err:.2e}, labels {got.argmax(1).tolist()}")
    print(f"mlserver_check: ready after {waited:.1f}s of waiting")
    print("OK")


if __name__ == "__main__":
    main()
