"""Cross-checks `cloud-expert analyze sparse-code` (Batch-OMP) against scikit-learn's
orthogonal_mp_gram on a fixture with a known answer: 300 signals in R^64, each a combination of
5 atoms of a random unit-norm dictionary of 256 atoms (plus 1 % noise), seeded.

usage: omp_crosscheck.py CLOUD_EXPERT_BIN WORKDIR      prints "all checks passed"
Tolerances: coefficients 1e-6 (same supports, float32 inputs compared in float64); the true
atoms recovered for at least 95 % of the signals.
"""
import json, os, subprocess, sys
import numpy as np
from sklearn.linear_model import orthogonal_mp_gram

exe, work = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(3)
C, M, S, N = 64, 256, 5, 300
D = rng.standard_normal((M, C)).astype(np.float32)
D /= np.linalg.norm(D, axis=1, keepdims=True)
true = np.stack([rng.choice(M, S, replace=False) for _ in range(N)])
coef = rng.uniform(1, 2, (N, S)) * rng.choice([-1, 1], (N, S))
H = np.einsum("ns,nsc->nc", coef, D[true]) + 0.01 * rng.standard_normal((N, C))
H = H.astype(np.float32)
np.save(os.path.join(work, "dict.npy"), D)
np.save(os.path.join(work, "signals.npy"), H)
out = os.path.join(work, "codes.json")
subprocess.run([exe, "analyze", "sparse-code", "--input", os.path.join(work, "signals.npy"),
                "--dictionary", os.path.join(work, "dict.npy"), "--sparsity", str(S), "--json", out],
               check=True)
got = json.load(open(out))
D64, H64 = D.astype(np.float64), H.astype(np.float64)
ref = orthogonal_mp_gram(Gram=D64 @ D64.T, Xy=D64 @ H64.T, n_nonzero_coefs=S).T  # (N, M)
ours = np.zeros((N, M))
for i, code in enumerate(got["codes"]):
    for k, g in code:
        ours[i, int(k)] = g
err = np.abs(ours - ref).max()
recovered = np.mean([set(np.flatnonzero(ours[i])) == set(true[i]) for i in range(N)])
mse = np.mean((H64 - ours @ D64) ** 2)
print(f"max |ours - sklearn| {err:.2e}; true supports recovered {recovered:.3f}; mse {got['mse']:.3e} (numpy {mse:.3e}); "
      f"perplexity {got['usage_perplexity']:.1f}; dead atoms {got['dead_atoms']}")
assert err < 1e-6, err
assert recovered >= 0.95, recovered
assert abs(got["mse"] / mse - 1) < 1e-6
assert got["n_signals"] == N
print("all checks passed")
