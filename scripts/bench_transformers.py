"""Reference generation speed of `transformers` on the same GGUF (float32, greedy).

usage: bench_transformers.py GGUF_DIR GGUF_FILE TOKENS THREADS OUT.json
Batch 1 and batch 8 (the same prompt eight times) generate exactly TOKENS new tokens;
time to first token is the time of a one-token generate; best of 3 runs each.
"""
import json, sys, time
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

d, f, n, threads, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(threads)
PROMPT = "Write a short story about a robot who learns to paint."
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
ids = tok(PROMPT, return_tensors="pt").input_ids


def gen(batch, new):
    x = ids.repeat(batch, 1)
    with torch.no_grad():
        t0 = time.perf_counter()
        y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, pad_token_id=tok.eos_token_id)
        dt = time.perf_counter() - t0
    assert y.shape[1] - x.shape[1] == new
    return dt


gen(1, 4)  # warm-up
b1 = min(gen(1, n) for _ in range(3))
b8 = min(gen(8, n) for _ in range(3))
ttft = min(gen(1, 1) for _ in range(3))
res = {"transformers": transformers.__version__, "torch": torch.__version__, "tokens": n,
       "threads": threads, "b1_tok_s": n / b1, "b8_tok_s": 8 * n / b8, "ttft_ms": 1e3 * ttft}
json.dump(res, open(out, "w"))
print(json.dumps(res))
