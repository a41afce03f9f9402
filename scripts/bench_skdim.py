"""scikit-dimension's TwoNN and MLE (k = 20) on N x D uniform float32 points, and scikit-learn's
orthogonal_mp_gram (S = 5, 512 unit-norm atoms of dimension 64, 10,000 signals), best of 3.
usage: bench_skdim.py N D OUT.json"""
import json, sys, time
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
json.dump(res, open(out, "w"))
print(json.dumps(res))
