"""Cross-checks `POST /v1/analysis/embed` (texts embedded by the served LLM) against
`transformers` on the same checkpoint (the tiny fixture's GGUF file): the hidden
states after `layer` blocks (transformers' `hidden_states[layer]`; 0 is the token embeddings),
pooled by mean, last or first token, for texts of different lengths run together.

usage: embed_crosscheck.py HTTP_URL GGUF_DIR GGUF_FILE LAYERS     prints "all checks passed"
Tolerance: 1e-4 absolute (float32).
"""
import json, sys, urllib.request
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

url, d, f, layers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
texts = ["a", "hello world", "the quick brown fox jumps over the lazy dog", "12 + 30 = 42", "x y z x y z x y z"]
worst = 0.0
for layer in sorted({0, 1, layers - 1}):
    for pooling in ["mean", "last", "first"]:
        body = json.dumps({"texts": texts, "embedding": {"layer": layer, "pooling": pooling}}).encode()
        req = urllib.request.Request(f"{url}/v1/analysis/embed", data=body, headers={"content-type": "application/json"})
        got = json.load(urllib.request.urlopen(req))
        assert got["layer"] == layer and got["pooling"] == pooling, got
        for t, ours in zip(texts, got["embeddings"]):
            # The fixture's GGUF does not ask for a BOS token (no tokenizer.ggml.add_bos_token),
            # so the server adds none; transformers' llama default would.
            ids = tok(t, return_tensors="pt", add_special_tokens=False).input_ids
            with torch.no_grad():
                h = model(ids, output_hidden_states=True).hidden_states[layer][0]
            ref = {"mean": h.mean(0), "last": h[-1], "first": h[0]}[pooling]
            err = (torch.tensor(ours) - ref).abs().max().item()
            worst = max(worst, err)
            assert err < 1e-4, (layer, pooling, t, err)
print(f"worst |ours - transformers| {worst:.2e} over layers {sorted({0, 1, layers - 1})}")
print("all checks passed")
