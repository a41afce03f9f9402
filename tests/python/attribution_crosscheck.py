"""Cross-checks `cloud-expert analyze attribution` against an independent computation in
PyTorch (torch.func per-sample gradients), scikit-learn and SciPy, on a trained digits expert.

- pNTK: the expert is rebuilt in float64 from its expert.safetensors; g(x) is the gradient of
  the sum of the logits w.r.t. every parameter (torch.func.vmap over torch.func.grad); the
  normalised kernel g(x).g(x') / sqrt(g(x).g(x) g(x').g(x')) must equal the dumped one within
  1e-5 (the project's gradients are float32).
- trNTK: per-class gradients (torch.func.jacrev), summed products, same tolerance.
- The surrogate fitted to the labels equals scikit-learn's LogisticRegression(C = 1/(n l2))
  on the same kernel rows: query probabilities within 1e-5.
- Kendall tau: scipy.stats.kendalltau (tau-b) of the dumped surrogate and network
  probabilities of each query's label equals the reported one within 1e-12.

usage: attribution_crosscheck.py EXPERT_DIR PNTK_DUMP PNTK_REPORT TRNTK_DUMP L2
prints "all checks passed"
"""
import json, sys
import numpy as np
import scipy.stats
import torch
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression
from torch.func import functional_call, grad, jacrev, vmap

expert_dir, pntk_dump, pntk_report, trntk_dump, l2 = sys.argv[1:6]
l2 = float(l2)
w = {k: v.to(torch.float64) for k, v in load_file(f"{expert_dir}/expert.safetensors").items()}
hidden = sorted(int(k[2:].split(".")[0]) for k in w if k.startswith("fc") and k.endswith(".weight"))
params = {k: v for k, v in w.items() if not k.startswith("norm_")}


def forward(p, x):
    h = (x - w["norm_mean"]) * w["norm_inv_std"]
    for i in hidden:
        h = torch.relu(h @ p[f"fc{i}.weight"].T + p[f"fc{i}.bias"])
    return h @ p["head.weight"].T + p["head.bias"]


def flat_grads(g):
    return torch.cat([g[k].reshape(g[k].shape[0], -1) for k in sorted(g)], 1)


def normalised(rows_g, n):
    k = rows_g @ rows_g[:n].T
    d = torch.sqrt((rows_g * rows_g).sum(1))
    return k / d[:, None] / d[None, :n]


checks = 0
a = json.load(open(pntk_dump))
x = torch.tensor(a["points"], dtype=torch.float64)
n = len(a["train_index"])
g = flat_grads(vmap(grad(lambda p, xi: forward(p, xi[None]).sum()), in_dims=(None, 0))(params, x))
ours = np.array(a["kernel"])
ref = normalised(g, n).numpy()
err = np.abs(ours - ref).max()
print(f"pNTK: {ours.shape}, {g.shape[1]} parameters, max |diff| {err:.2e}")
assert err < 1e-5, err
checks += 1

b = json.load(open(trntk_dump))
xb = torch.tensor(b["points"], dtype=torch.float64)
jac = vmap(jacrev(lambda p, xi: forward(p, xi[None])[0]), in_dims=(None, 0))(params, xb)
# jac[k]: [N, C, *shape]; trNTK = sum over classes of per-class gradient products.
per_class = torch.cat([jac[k].reshape(jac[k].shape[0], jac[k].shape[1], -1) for k in sorted(jac)], 2)
k_tr = torch.einsum("icp,jcp->ij", per_class, per_class[:n])
d_tr = torch.sqrt(torch.einsum("icp,icp->i", per_class, per_class))
ref_tr = (k_tr / d_tr[:, None] / d_tr[None, :n]).numpy()
err = np.abs(np.array(b["kernel"]) - ref_tr).max()
print(f"trNTK: max |diff| {err:.2e}")
assert err < 1e-5, err
checks += 1

# Surrogate (fitted to the labels) against scikit-learn on the same kernel rows.
labels = np.array(a["train_labels"])
lr = LogisticRegression(C=1.0 / (n * l2), tol=1e-12, max_iter=20000)
lr.fit(ours[:n], labels)
sk = lr.predict_proba(ours[n:])
mine = np.array(a["surrogate_query_proba"])
err = np.abs(sk - mine).max()
print(f"surrogate vs scikit-learn LogisticRegression: max |diff| of probabilities {err:.2e}")
assert err < 1e-5, err
checks += 1

report = json.load(open(pntk_report))
qlab = np.array([q["label"] for q in report["queries"]])
net = np.array(a["network_query_proba"])[np.arange(len(qlab)), qlab]
sur = mine[np.arange(len(qlab)), qlab]
tau = scipy.stats.kendalltau(sur, net).statistic
print(f"Kendall tau: ours {report['surrogate']['kendall_tau']:.6f}, scipy {tau:.6f}")
assert abs(tau - report["surrogate"]["kendall_tau"]) < 1e-12
checks += 1
print(f"all checks passed ({checks})")
