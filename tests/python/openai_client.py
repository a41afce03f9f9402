"""Drives the server's OpenAI-compatible API with the official `openai` package.

usage: openai_client.py BASE_URL BASE_MODEL ADAPTER
Checks models, completions, chat, streaming (both), an adapter by name, seeds, stop strings,
usage counts and the errors for an unknown model and a bad parameter; prints "all checks passed".
"""
import sys
import openai

base_url, base, adapter = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    checks += 1


ids = [m.id for m in client.models.list().data]
check(base in ids and adapter in ids, f"models list {ids}")
check(client.models.retrieve(adapter).id == adapter, "retrieve adapter")

# Completion, greedy: deterministic, usage adds up, max_tokens honoured.
c1 = client.completions.create(model=base, prompt="Hello, world", max_tokens=12, temperature=0)
c2 = client.completions.create(model=base, prompt="Hello, world", max_tokens=12, temperature=0)
check(c1.object == "text_completion" and c1.choices[0].text == c2.choices[0].text, "greedy is deterministic")
u = c1.usage
check(u.completion_tokens <= 12 and u.total_tokens == u.prompt_tokens + u.completion_tokens, f"usage {u}")
check(c1.choices[0].finish_reason in ("stop", "length"), "finish reason")

# The adapter changes the output of the same prompt.
ca = client.completions.create(model=adapter, prompt="Hello, world", max_tokens=12, temperature=0)
check(ca.model == adapter and ca.choices[0].text != c1.choices[0].text, "adapter output differs from base")

# Seeded sampling is reproducible.
s1 = client.completions.create(model=base, prompt="The fox", max_tokens=10, temperature=1.0, top_p=0.9, seed=7)
s2 = client.completions.create(model=base, prompt="The fox", max_tokens=10, temperature=1.0, top_p=0.9, seed=7)
check(s1.choices[0].text == s2.choices[0].text, "seeded sampling reproducible")

# Stop string: output never contains it.
full = c1.choices[0].text
if len(full) >= 4:
    stop = full[2:4]
    cs = client.completions.create(model=base, prompt="Hello, world", max_tokens=12, temperature=0, stop=[stop])
    check(cs.choices[0].text == full[: full.index(stop)] and cs.choices[0].finish_reason == "stop", "stop string")

# Streaming completion equals the non-streamed text.
pieces = []
for chunk in client.completions.create(model=base, prompt="Hello, world", max_tokens=12, temperature=0, stream=True):
    if chunk.choices:
        pieces.append(chunk.choices[0].text)
check("".join(pieces) == full, f"streamed completion {''.join(pieces)!r} vs {full!r}")

# Chat, non-streamed and streamed with usage, through the adapter.
msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
chat = client.chat.completions.create(model=adapter, messages=msgs, max_tokens=10, temperature=0)
check(chat.object == "chat.completion" and chat.choices[0].message.role == "assistant", "chat shape")
text = chat.choices[0].message.content
stream = client.chat.completions.create(model=adapter, messages=msgs, max_tokens=10, temperature=0,
                                        stream=True, stream_options={"include_usage": True})
got, usage, finish = [], None, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for ch in chunk.choices:
        if ch.delta.content:
            got.append(ch.delta.content)
        if ch.finish_reason:
            finish = ch.finish_reason
check("".join(got) == text, "streamed chat equals chat")
check(usage is not None and usage.completion_tokens == chat.usage.completion_tokens, "stream usage chunk")
check(finish in ("stop", "length"), "stream finish reason")

# Errors: unknown model is a 404 NotFoundError; a bad parameter is a 400 BadRequestError.
try:
    client.chat.completions.create(model="no-such-model", messages=msgs, max_tokens=3)
    check(False, "unknown model must fail")
except openai.NotFoundError as e:
    check(e.status_code == 404 and e.body.get("code") == "model_not_found", f"404 body {e.body}")
try:
    client.completions.create(model=base, prompt="x", max_tokens=3, temperature=3.5)
    check(False, "temperature 3.5 must fail")
except openai.BadRequestError as e:
    check(e.body.get("param") == "temperature", f"400 body {e.body}")
try:
    client.completions.create(model=base, prompt="x", max_tokens=100000)
    check(False, "max_tokens beyond the limit must fail")
except openai.BadRequestError as e:
    check("max_tokens" in e.message, f"max_tokens error {e.message}")

print(f"all checks passed ({checks})")
