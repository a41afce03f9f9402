"""Cross-checks `cloud-expert analyze spectrum` and `POST /v1/analysis/spectrum` against
WeightWatcher 0.7.7 (its default power-law fitter) and powerlaw 2.0.0 on seeded fixtures with
known answers:

- a Gaussian 600 x 300 matrix (Marchenko-Pastur bulk, entry variance 0.04, no spikes);
- the same plus a planted rank-3 signal (three spikes past the bulk edge);
- a heavy-tailed 1000 x 500 matrix (Student-t entries, 3 degrees of freedom);
- a wide 300 x 700 matrix (the Gram matrix is taken on the short side);
- diag(sqrt(x)) for a Pareto sample x with density exponent 2.5 (its eigenvalues are x).

usage: spectrum_crosscheck.py CLOUD_EXPERT_BIN WORKDIR HTTP_URL     prints "all checks passed"
Tolerances: alpha and the KS distance 1e-6 absolute, xmin, lambda_max and stable rank 1e-9
relative, matrix entropy 1e-9, eigenvalues 1e-9 x lambda_max (numpy SVD, float64); the number
of tail values equal. The HTTP answer equals the offline one to 1e-9.
"""
import json, os, subprocess, sys, urllib.request, warnings
import numpy as np
import torch
import powerlaw
import weightwatcher as ww

warnings.simplefilter("ignore")
exe, work, url = sys.argv[1], sys.argv[2], sys.argv[3]
rng = np.random.default_rng(5)

gauss = (0.2 * rng.standard_normal((600, 300))).astype(np.float32)
u = rng.standard_normal((600, 3)); u /= np.linalg.norm(u, axis=0)
v = rng.standard_normal((300, 3)); v /= np.linalg.norm(v, axis=0)
spiked = (gauss + (u * np.array([30.0, 20.0, 15.0])) @ v.T).astype(np.float32)
heavy = (0.05 * rng.standard_t(3, (1000, 500))).astype(np.float32)
wide = (0.1 * rng.standard_normal((300, 700))).astype(np.float32)
pareto = np.sort((rng.pareto(1.5, 800) + 1.0) * 0.1)
diag = np.diag(np.sqrt(pareto)).astype(np.float32)
fixtures = {"gauss": gauss, "spiked": spiked, "heavy": heavy, "wide": wide, "pareto": diag}


def ours(name, W):
    path = os.path.join(work, f"{name}.npy")
    np.save(path, W)
    out = os.path.join(work, f"{name}.json")
    subprocess.run([exe, "analyze", "spectrum", "--input", path, "--eigenvalues", "--json", out], check=True)
    return json.load(open(out))["layers"][0]


def weightwatcher(W):
    out_dim, in_dim = W.shape
    model = torch.nn.Sequential(torch.nn.Linear(in_dim, out_dim, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(W))
    return ww.WeightWatcher(model=model).analyze().iloc[0]


def close(a, b, tol, what, rel=False):
    err = abs(a - b) / (abs(b) if rel else 1.0)
    assert err <= tol, f"{what}: ours {a!r}, reference {b!r} (error {err:.2e} > {tol})"
    return err


worst = {"alpha": 0.0, "D": 0.0, "xmin": 0.0, "evals": 0.0}
for name, W in fixtures.items():
    got, ref = ours(name, W), weightwatcher(W)
    pl = got["power_law"]
    worst["alpha"] = max(worst["alpha"], close(pl["alpha"], ref["alpha"], 1e-6, f"{name} alpha"))
    worst["D"] = max(worst["D"], close(pl["ks_distance"], ref["D"], 1e-6, f"{name} KS distance"))
    worst["xmin"] = max(worst["xmin"], close(pl["xmin"], ref["xmin"], 1e-9, f"{name} xmin", rel=True))
    assert pl["n_tail"] == ref["num_pl_spikes"], (name, pl["n_tail"], ref["num_pl_spikes"])
    close(got["lambda_max"], ref["lambda_max"], 1e-9, f"{name} lambda_max", rel=True)
    close(got["stable_rank"], ref["stable_rank"], 1e-9, f"{name} stable rank", rel=True)
    close(got["matrix_entropy"], ref["entropy"], 1e-9, f"{name} matrix entropy")
    close(got["alpha_hat"], ref["alpha_weighted"], 1e-6, f"{name} alpha-hat")
    sv = np.linalg.svd(W.astype(np.float64), compute_uv=False)
    evals = np.sort(sv * sv)
    err = np.abs(np.array(got["eigenvalues"]) - evals).max() / evals[-1]
    worst["evals"] = max(worst["evals"], err)
    assert err < 1e-9, (name, err)
    print(f"{name}: alpha {pl['alpha']:.6f} (ww {ref['alpha']:.6f}), xmin {pl['xmin']:.6g}, "
          f"D {pl['ks_distance']:.6f}, tail {pl['n_tail']}, spikes {len(got['marchenko_pastur']['spikes'])}")
    if name == "pareto":
        # powerlaw's own continuous fit picks the same xmin on the same eigenvalues.
        f = powerlaw.Fit(np.array(got["eigenvalues"]), verbose=False)
        close(pl["alpha"], f.alpha, 1e-6, "pareto alpha vs powerlaw")
        close(pl["xmin"], f.xmin, 1e-9, "pareto xmin vs powerlaw", rel=True)
        close(pl["ks_distance"], f.D, 1e-6, "pareto D vs powerlaw")
        assert abs(pl["alpha"] - 2.5) < 0.1, pl
    if name == "gauss":
        mp = got["marchenko_pastur"]
        assert mp["spikes"] == [], mp["spikes"]
        close(mp["sigma2"], 0.04, 0.002, "gauss MP variance")
        close(mp["q"], 2.0, 1e-12, "gauss Q")
    if name == "spiked":
        assert len(got["marchenko_pastur"]["spikes"]) == 3, got["marchenko_pastur"]

# The HTTP endpoint gives the offline answer.
body = json.dumps({"matrices": [{"name": "heavy", "values": heavy.astype(np.float64).tolist()}],
                   "options": {"eigenvalues": True}}).encode()
req = urllib.request.Request(f"{url}/v1/analysis/spectrum", data=body, headers={"content-type": "application/json"})
http = json.load(urllib.request.urlopen(req))["layers"][0]
offline = json.load(open(os.path.join(work, "heavy.json")))["layers"][0]
# Same numbers up to libtorch's thread count (the server's and the CLI's may differ).
for key in ["lambda_max", "stable_rank", "matrix_entropy", "alpha_hat"]:
    close(http[key], offline[key], 1e-9, f"HTTP vs offline {key}", rel=True)
for key in ["alpha", "xmin", "ks_distance"]:
    close(http["power_law"][key], offline["power_law"][key], 1e-9, f"HTTP vs offline {key}", rel=True)
assert http["power_law"]["n_tail"] == offline["power_law"]["n_tail"]
assert len(http["eigenvalues"]) == 500 and http["shape"] == [1000, 500]
print("worst errors: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
print("all checks passed")
