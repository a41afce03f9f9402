"""Cross-checks /v1/analysis/intrinsic-dimension against scikit-dimension 0.5.0 on fixtures with
known answers (generated here, seeded): a 5-ball in R^20, a swiss roll (2-d) in R^10, a 3-sphere
in R^16. Points are float32 (what the server computes with), compared in float64; each is
also uploaded as a float32 .npy file and must give the same answers.

usage: id_crosscheck.py HTTP_URL      prints one line per fixture, then "all checks passed"
Tolerances: TwoNN and MLE (global and per point) 1e-6 relative; lPCA exactly equal; every
estimate within 20 % of the true dimension.
"""
import io, json, sys, urllib.request
import numpy as np
import skdim

url = sys.argv[1].rstrip("/") + "/v1/analysis/intrinsic-dimension"
rng = np.random.default_rng(6)


def embed(x, D):
    q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    return x @ q[: x.shape[1]]


def ball(n, d):
    g = rng.standard_normal((n, d))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return g * rng.random((n, 1)) ** (1 / d)


def swiss(n):
    t = 1.5 * np.pi * (1 + 2 * rng.random(n))
    h = 21 * rng.random(n)
    return np.stack([t * np.cos(t), h, t * np.sin(t)], 1)


def sphere(n, d):
    g = rng.standard_normal((n, d + 1))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


fixtures = [("5-ball in R^20", embed(ball(2000, 5), 20), 5),
            ("swiss roll in R^10", embed(swiss(2000), 10), 2),
            ("3-sphere in R^16", embed(sphere(2000, 3), 16), 3)]
for name, x, true in fixtures:
    x = x.astype(np.float32).astype(np.float64)
    body = json.dumps({"embeddings": x.tolist(), "params": {"pointwise": True}}).encode()
    req = urllib.request.Request(url, body, {"content-type": "application/json"})
    got = json.load(urllib.request.urlopen(req, timeout=300))
    est = got["estimates"]
    ref_twonn = skdim.id.TwoNN().fit(x).dimension_
    mle = skdim.id.MLE().fit(x)
    ref_lpca = skdim.id.lPCA(ver="ratio", alphaRatio=0.75).fit(x).dimension_
    print(f"{name}: twonn {est['twonn']['dimension']:.6f} (skdim {ref_twonn:.6f}), "
          f"mle {est['mle']['dimension']:.6f} (skdim {mle.dimension_:.6f}), "
          f"lpca {est['lpca']['dimension']} (skdim {ref_lpca}), true {true}")
    assert got["n_points"] == len(x) and got["n_dropped"] == 0, got["n_points"]
    assert abs(est["twonn"]["dimension"] / ref_twonn - 1) < 1e-6, name
    assert abs(est["mle"]["dimension"] / mle.dimension_ - 1) < 1e-6, name
    pw = np.array(est["mle"]["pointwise"])
    assert np.max(np.abs(pw / mle.dimension_pw_ - 1)) < 1e-6, name
    assert est["lpca"]["dimension"] == ref_lpca, name
    for k in ("twonn", "mle"):
        assert abs(est[k]["dimension"] - true) < 0.2 * true, (name, k)
    assert len(est["lpca"]["pointwise"]) == len(x)
    # The same points as a float32 .npy upload, parameters in the query string.
    buf = io.BytesIO()
    np.save(buf, x.astype(np.float32))
    req = urllib.request.Request(url + "?k=20&discard_fraction=0.1", buf.getvalue(),
                                 {"content-type": "application/octet-stream"})
    up = json.load(urllib.request.urlopen(req, timeout=300))["estimates"]
    for k in ("twonn", "mle", "lpca"):
        assert abs(up[k]["dimension"] - est[k]["dimension"]) < 1e-9, (name, k, up[k])
print("all checks passed")
