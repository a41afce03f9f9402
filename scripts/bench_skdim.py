"""scikit-dimension's TwoNN and MLE (k = 20) on N x D uniform float32 points, scikit-learn's
orthogonal_mp_gram (S = 5, 512 unit-norm atoms of dimension 64, 10,000 signals), and
WeightWatcher's analyze() of one 2048 x 2048 layer (heavy-tailed, saved beside OUT.json as
spectrum.npy for cloud-expert to read), best of 3.
usage: bench_skdim.py N D OUT.json"""
import json, os, sys, time, warnings
import numpy as np
import skdim

n, d, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
x = np.random.default_rng(0).random((n, d), dtype=np.float32)


def best(f):
    t = []
    for _ in range(3):
        t0 = time.perf_counter()
        f()
        t.append(time.perf_counter() - t0)
    return min(t)


res = {"skdim": skdim.__version__, "n": n, "d": d,
       "twonn_s": best(lambda: skdim.id.TwoNN().fit(x)),
       "mle_s": best(lambda: skdim.id.MLE().fit(x))}
from sklearn.linear_model import orthogonal_mp_gram
rng = np.random.default_rng(1)
D = rng.standard_normal((512, 64))
D /= np.linalg.norm(D, axis=1, keepdims=True)
H = rng.standard_normal((10_000, 64))
G, Xy = D @ D.T, D @ H.T
res["omp_s"] = best(lambda: orthogonal_mp_gram(Gram=G, Xy=Xy, n_nonzero_coefs=5))

# One 2048 x 2048 layer: Student-t entries (4 degrees of freedom), float32.
import torch
import weightwatcher as ww
import scipy.linalg
warnings.simplefilter("ignore")
W = (0.02 * np.random.default_rng(2).standard_t(4, (2048, 2048))).astype(np.float32)
npy = os.path.join(os.path.dirname(os.path.abspath(out)), "spectrum.npy")
np.save(npy, W)
layer = torch.nn.Sequential(torch.nn.Linear(2048, 2048, bias=False))
with torch.no_grad():
    layer[0].weight.copy_(torch.from_numpy(W))
watcher = ww.WeightWatcher(model=layer)
res["ww_s"] = best(lambda: watcher.analyze())
res["ww_svd_s"] = best(lambda: scipy.linalg.svd(W.astype(float), compute_uv=False))
row = watcher.analyze().iloc[0]
res.update({"ww": ww.__version__, "spectrum_npy": npy, "ww_alpha": float(row["alpha"]),
            "ww_xmin": float(row["xmin"]), "ww_D": float(row["D"])})
json.dump(res, open(out, "w"))
print(json.dumps(res))
