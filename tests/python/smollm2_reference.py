"""Reference logits and tokenisation for the SmolLM2 GGUF from `transformers` (float32, same file).

usage: smollm2_reference.py GGUF_DIR GGUF_FILE OUT.json
Writes the prompt's token ids, the last position's logits, the argmax at every position, the ids
of several test strings, and the chat template rendered for one conversation with its ids.
"""
import sys, json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
d, f = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
ids = tok("The capital of France is", return_tensors="pt").input_ids
with torch.no_grad():
    lg = m(ids).logits[0]
texts = [
    "Hello world! 12345   x\n\nfoo",
    "def f(x):\n    return x ** 2  # squares\n",
    "naïve café, Straße; 日本語のテキスト 😀 ... it's we'll THEY'RE",
    "  leading spaces\ttabs\r\nwindows",
    "<|im_start|>user\nspecial tokens inside<|im_end|>",
]
chat = [{"role": "user", "content": "What is 2+2?"}]
chat_text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
json.dump({
    "ids": ids[0].tolist(), "last_logits": lg[-1].tolist(), "argmax": lg.argmax(-1).tolist(),
    "texts": [{"text": t, "ids": tok(t).input_ids} for t in texts],
    "chat": {"messages": chat, "text": chat_text, "ids": tok(chat_text).input_ids},
}, open(sys.argv[3], "w"))
print(ids[0].tolist(), lg[-1].argmax().item(), tok.decode([lg[-1].argmax().item()]))
