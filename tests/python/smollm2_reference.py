"""Reference logits for the SmolLM2 GGUF from `transformers` (float32, same GGUF file).

usage: smollm2_reference.py GGUF_DIR GGUF_FILE OUT.json
Writes the prompt's token ids, the last position's logits and the argmax at every position.
"""
import sys, json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
d, f = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
ids = tok("The capital of France is", return_tensors="pt").input_ids
with torch.no_grad():
    lg = m(ids).logits[0]
json.dump({"ids": ids[0].tolist(), "last_logits": lg[-1].tolist(), "argmax": lg.argmax(-1).tolist()}, open(sys.argv[3], "w"))
print(ids[0].tolist(), lg[-1].argmax().item(), tok.decode([lg[-1].argmax().item()]))
