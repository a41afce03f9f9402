"""Cross-checks `POST /v1/analysis/stratify` against scikit-learn and scikit-dimension on a
seeded fixture with a known answer: 3 groups of 150 points in R^30 on subspaces of dimension
2, 5 and 10 (offset apart), labels given.

With pca_dim >= the input dimension the PCA step is a rotation, shift and uniform scale, so the
strata's silhouette, Davies-Bouldin and Calinski-Harabasz scores equal scikit-learn's on the raw
points with the same labels (tolerance 1e-9 relative), and each stratum's lPCA dimension equals
scikit-dimension's lPCA (ratio, alpha 0.75) on its raw points (exact). KMeans strata agree with
scikit-learn's KMeans (adjusted Rand index >= 0.99) and with the groups (purity >= 0.98).

usage: stratify_crosscheck.py HTTP_URL     prints "all checks passed"
"""
import json, sys, time, urllib.request
import numpy as np
import skdim
from sklearn.cluster import KMeans
from sklearn.metrics import (adjusted_rand_score, calinski_harabasz_score,
                             davies_bouldin_score, silhouette_score)

url = sys.argv[1]
rng = np.random.default_rng(8)
X, y = [], []
for g, dim in enumerate([2, 5, 10]):
    basis = rng.standard_normal((dim, 30))
    offset = np.zeros(30); offset[g * 10:(g + 1) * 10] = 8.0
    X.append(rng.uniform(-1, 1, (150, dim)) @ basis + offset)
    y += [g] * 150
X, y = np.vstack(X), np.array(y)
body = {"embeddings": X.tolist(), "labels": y.tolist(),
        "params": {"experts": 3, "pca_dim": 30, "code_dim": 16, "sparsities": [2, 5, 10],
                   "epochs": 10, "batch_size": 64, "lr": 0.005, "kmeans_k": 3, "seed": 1}}
req = urllib.request.Request(f"{url}/v1/analysis/stratify", data=json.dumps(body).encode(),
                             headers={"content-type": "application/json"})
job = json.load(urllib.request.urlopen(req))["job_id"]
t0 = time.time()
while True:
    v = json.load(urllib.request.urlopen(f"{url}/v1/analysis/jobs/{job}"))
    if v["state"] not in ("queued", "running"):
        break
    assert time.time() - t0 < 300, v
    time.sleep(0.1)
assert v["state"] == "succeeded", v
r = v["result"]
labels = np.array(r["strata_assignment"])
checks = [("silhouette", silhouette_score(X, labels)), ("davies_bouldin", davies_bouldin_score(X, labels)),
          ("calinski_harabasz", calinski_harabasz_score(X, labels))]
worst = 0.0
for key, ref in checks:
    err = abs(r[key] - ref) / abs(ref)
    worst = max(worst, err)
    assert err < 1e-9, (key, r[key], ref)
ari = adjusted_rand_score(labels, KMeans(3, n_init=4, random_state=0).fit_predict(X))
assert ari >= 0.99, ari
for s, stratum in enumerate(r["strata"]):
    pts = X[labels == s]
    ref = int(skdim.id.lPCA(ver="ratio", alphaRatio=0.75).fit(pts).dimension_)
    assert stratum["lpca_dimension"] == ref, (s, stratum, ref)
    assert stratum["label_purity"] >= 0.98, stratum
H = np.array(r["gating_entropy"])
assert ((H >= 0) & (H <= 1 + 1e-9)).all() and abs(sum(r["usage"]) - 1) < 1e-12
print(f"scores: silhouette {r['silhouette']:.6f}, Davies-Bouldin {r['davies_bouldin']:.6f}, "
      f"Calinski-Harabasz {r['calinski_harabasz']:.3f}; worst relative error vs scikit-learn {worst:.1e}; "
      f"ARI vs sklearn KMeans {ari:.3f}; lPCA per stratum {[s['lpca_dimension'] for s in r['strata']]}; "
      f"expert usage {np.round(r['usage'], 3).tolist()}, mean gating entropy {r['mean_gating_entropy']:.3f}, "
      f"loss {r['loss_history'][0]:.4f} -> {r['loss_history'][-1]:.4f}")
print("all checks passed")
