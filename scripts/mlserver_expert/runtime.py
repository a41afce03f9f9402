"""MLServer runtime that serves a cloud-expert model version with numpy.

The forward pass mirrors `cloud-expert/src/nets.rs` (`Net::forward`) and
`cloud-expert/src/stored.rs` (`LoadedExpert::probs`) exactly, in float32:

    h = (x - norm_mean) * norm_inv_std          # buffers stored in expert.safetensors
    cnn only: h = h.reshape(-1, c, h, w); per block conv3x3(pad 1) -> relu -> maxpool2;
              h = flatten(h)                    # channel-major, like torch
    per hidden layer i: h = relu(h @ fc{i}.weight.T + fc{i}.bias)
    raw = h @ head.weight.T + head.bias
    probabilities = softmax(raw)                # or, with single_score,
                                                # p1 = sigmoid(2 raw); [1 - p1, p1]

The model settings' `parameters.uri` is the version directory holding
`expert.safetensors` and `expert.json`. Requests carry one FP32 tensor of
shape [rows, ...] whose trailing dimensions multiply to the feature count;
the response carries one FP32 tensor `probabilities` of shape [rows, K].
"""

import json
import os

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri
from safetensors.numpy import load_file

KERNEL = 3


class ExpertNet:
    """The expert network's weights and a float32 numpy forward pass."""

    def __init__(self, version_dir: str):
        with open(os.path.join(version_dir, "expert.json")) as f:
            meta = json.load(f)
        w = load_file(os.path.join(version_dir, "expert.safetensors"))
        f32 = lambda name: np.ascontiguousarray(w[name], dtype=np.float32)  # noqa: E731
        self.meta = meta
        self.arch = meta["arch"]["type"]
        self.input_shape = [int(v) for v in meta["input_shape"]]
        self.feature_len = int(np.prod(self.input_shape))
        self.num_classes = int(meta["num_classes"])
        self.single_score = bool(meta.get("single_score", False))
        # The tch VarStore loads these buffers from the checkpoint (they override expert.json).
        self.mean = f32("norm_mean")
        self.inv_std = f32("norm_inv_std")
        self.convs = []
        if self.arch == "cnn":
            if len(self.input_shape) != 3:
                raise ValueError(f"a CNN needs [c, h, w] input, got {self.input_shape}")
            i = 0
            while f"conv{i}.weight" in w:
                self.convs.append((f32(f"conv{i}.weight"), f32(f"conv{i}.bias")))
                i += 1
        elif self.arch != "mlp":
            raise ValueError(f"unsupported arch {self.arch!r}")
        self.hidden = []
        i = 0
        while f"fc{i}.weight" in w:
            # Stored [out, in]; keep the transpose contiguous for the matmul.
            self.hidden.append((np.ascontiguousarray(f32(f"fc{i}.weight").T), f32(f"fc{i}.bias")))
            i += 1
        self.head = (np.ascontiguousarray(f32("head.weight").T), f32("head.bias"))
        out_dim = 1 if self.single_score else self.num_classes
        if self.head[0].shape[1] != out_dim:
            raise ValueError(f"head has {self.head[0].shape[1]} outputs, expected {out_dim}")

    @staticmethod
    def _conv_relu_pool(h: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
        n, c, hh, ww = h.shape
        cout = weight.shape[0]
        p = KERNEL // 2
        padded = np.pad(h, ((0, 0), (0, 0), (p, p), (p, p)))
        # [n, c, hh, ww, k, k] -> [n, hh, ww, c, k, k] -> [n*hh*ww, c*k*k]
        win = np.lib.stride_tricks.sliding_window_view(padded, (KERNEL, KERNEL), axis=(2, 3))
        cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * hh * ww, c * KERNEL * KERNEL)
        out = cols @ weight.reshape(cout, -1).T + bias  # [n*hh*ww, cout]
        out = out.reshape(n, hh, ww, cout).transpose(0, 3, 1, 2)
        out = np.maximum(out, np.float32(0))
        h2, w2 = hh // 2, ww // 2
        out = out[:, :, : h2 * 2, : w2 * 2].reshape(n, cout, h2, 2, w2, 2)
        return out.max(axis=(3, 5))

    def probs(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities [rows, K] for raw features x [rows, d] (float32)."""
        h = (x - self.mean) * self.inv_std
        if self.convs:
            h = h.reshape([-1] + self.input_shape)
            for weight, bias in self.convs:
                h = self._conv_relu_pool(h, weight, bias)
            h = h.reshape(h.shape[0], -1)
        for wt, b in self.hidden:
            h = np.maximum(h @ wt + b, np.float32(0))
        raw = h @ self.head[0] + self.head[1]
        if self.single_score:
            with np.errstate(over="ignore"):  # exp overflow -> inf -> p1 = 0, as in torch
                p1 = np.float32(1) / (np.float32(1) + np.exp(-(raw[:, 0] * np.float32(2))))
            return np.stack([np.float32(1) - p1, p1], axis=1).astype(np.float32, copy=False)
        z = raw - raw.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32, copy=False)


class ExpertRuntime(MLModel):
    """Serves one expert version: FP32 [rows, ...features] in, `probabilities` [rows, K] out."""

    async def load(self) -> bool:
        version_dir = await get_model_uri(self.settings)
        self.net = ExpertNet(version_dir)
        # Warm-up, like the Rust batcher does.
        self.net.probs(np.zeros((1, self.net.feature_len), dtype=np.float32))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) != 1:
            raise InferenceError(f"expected exactly one input tensor, got {len(payload.inputs)}")
        inp = payload.inputs[0]
        if inp.datatype != "FP32":
            raise InferenceError(f"input `{inp.name}`: datatype must be FP32, not {inp.datatype}")
        shape = list(inp.shape)
        d = self.net.feature_len
        if len(shape) < 2 or int(np.prod(shape[1:])) != d:
            raise InferenceError(
                f"input `{inp.name}`: shape {shape} must be [rows, ...] with {d} values per row"
            )
        x = NumpyCodec.decode_input(inp)
        rows = shape[0]
        if x.size != rows * d:
            raise InferenceError(
                f"input `{inp.name}`: {x.size} values for shape {shape}"
            )
        x = np.asarray(x, dtype=np.float32).reshape(rows, d)
        probs = self.net.probs(x)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output("probabilities", probs)],
        )
