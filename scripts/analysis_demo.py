"""Drives the analysis demo against a running server (see scripts/analysis-demo.sh).
usage: analysis_demo.py HTTP_URL TEXTS.jsonl OUT_DIR"""
import collections, json, sys, time, urllib.request

url, texts_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [json.loads(l) for l in open(texts_path)]
texts = [r["text"] for r in rows]
domains = sorted({r["domain"] for r in rows})
labels = [domains.index(r["domain"]) for r in rows]
LAYER = 25  # a late block of SmolLM2's 30


def post(path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req))


def job(path, body):
    t0 = time.time()
    jid = post(path, body)["job_id"]
    while True:
        v = json.load(urllib.request.urlopen(f"{url}/v1/analysis/jobs/{jid}"))
        if v["state"] not in ("queued", "running"):
            break
        time.sleep(0.2)
    assert v["state"] == "succeeded", v
    return v["result"], time.time() - t0


emb = {"layer": LAYER, "pooling": "mean"}
print(f"{len(texts)} texts, {len(domains)} domains ({', '.join(domains)}); SmolLM2 block {LAYER} of 30, mean pooling")
strat, secs = job("/v1/analysis/stratify", {"texts": texts, "embedding": emb, "labels": labels,
                  "params": {"experts": 4, "kmeans_k": 4, "seed": 0, "epochs": 400, "lr": 0.005, "batch_size": 32, "standardize": True}})
json.dump(strat, open(f"{out}/stratify.json", "w"))
print(f"\nstratification ({secs:.1f} s including embedding): loss {strat['loss_history'][0]:.4f} -> {strat['loss_history'][-1]:.4f}")
print("| stratum | size | majority domain | purity | lPCA dim | sparsity-weighted complexity |")
print("|---|---|---|---|---|---|")
total_major = 0
for s, st in enumerate(strat["strata"]):
    members = [labels[i] for i, a in enumerate(strat["strata_assignment"]) if a == s]
    major, count = collections.Counter(members).most_common(1)[0] if members else (0, 0)
    total_major += count
    print(f"| {s} | {st['size']} | {domains[major]} | {st['label_purity']:.2f} | {st['lpca_dimension']} | {st['sparsity_weighted_complexity']:.1f} |")
print(f"overall strata purity {total_major / len(texts):.3f}; silhouette {strat['silhouette']:.3f}, "
      f"Davies-Bouldin {strat['davies_bouldin']:.3f}, Calinski-Harabasz {strat['calinski_harabasz']:.1f}")
print(f"experts (sparsities {strat['sparsities']}): usage {[round(u, 2) for u in strat['usage']]}, "
      f"purity {strat['expert_label_purity']:.3f}, mean gating entropy {strat['mean_gating_entropy']:.3f}")
for d, name in enumerate(domains):
    use = collections.Counter(a for a, l in zip(strat["assignment"], labels) if l == d)
    print(f"  {name:10s} -> experts {dict(sorted(use.items()))}")

ids, secs = job("/v1/analysis/intrinsic-dimension", {"texts": texts, "embedding": emb, "params": {"k": 10}})
est = ids["estimates"]
print(f"\nintrinsic dimension of all texts ({secs:.1f} s): TwoNN {est['twonn']['dimension']:.2f}, "
      f"MLE {est['mle']['dimension']:.2f}, lPCA {est['lpca']['dimension']}")

spec, secs = job("/v1/analysis/spectrum", {"model": "smollm2"})
json.dump(spec, open(f"{out}/spectrum.json", "w"))
by = collections.defaultdict(list)
for l in spec["layers"]:
    kind = l["name"].split(".")[-2] if l["name"].count(".") >= 2 else l["name"]
    by[kind].append(l)
print(f"\nspectra of {len(spec['layers'])} SmolLM2 weights ({secs:.1f} s):")
print("| weight | layers | mean alpha | mean stable rank | mean MP spikes |")
print("|---|---|---|---|---|")
for kind, ls in sorted(by.items()):
    alphas = [l["power_law"]["alpha"] for l in ls if l["power_law"]]
    print(f"| {kind} | {len(ls)} | {sum(alphas) / max(len(alphas), 1):.2f} | "
          f"{sum(l['stable_rank'] for l in ls) / len(ls):.1f} | {sum(len(l['marchenko_pastur']['spikes']) for l in ls) / len(ls):.1f} |")
print(f"\nreports in {out}/stratify.json and {out}/spectrum.json")
