"""scikit-dimension's TwoNN and MLE (k = 20) on N x D uniform float32 points, best of 3.
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
json.dump(res, open(out, "w"))
print(json.dumps(res))
