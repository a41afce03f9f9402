"""Writes the project's own fine-tuning task: rewrite a date given in one of many English
formats as ISO 8601 (YYYY-MM-DD). The answer format is strict, so exact-match accuracy on the
held-out split measures adaptation. Deterministic (seed 20261205); no external data.

usage: python3 scripts/make_date_task.py [OUT_DIR]   (default shared/data/llm/dates)
"""
import json, random, sys, os

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


def ordinal(d):
    suffix = "th" if 10 <= d % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")
    return f"{d}{suffix}"


FORMATS = [
    lambda y, m, d: f"{MONTHS[m]} {d}, {y}",
    lambda y, m, d: f"{d} {MONTHS[m]} {y}",
    lambda y, m, d: f"{MONTHS[m][:3]} {d} {y}",
    lambda y, m, d: f"{d} {MONTHS[m][:3]}. {y}",
    lambda y, m, d: f"the {ordinal(d)} of {MONTHS[m]}, {y}",
    lambda y, m, d: f"{MONTHS[m]} {ordinal(d)} {y}",
    lambda y, m, d: f"{y}, {MONTHS[m]} {d}",
    lambda y, m, d: f"{d:02d}.{m + 1:02d}.{y} (day.month.year)",
    lambda y, m, d: f"{m + 1}/{d}/{y} (US)",
]

PROMPTS = [
    "Rewrite this date in ISO 8601 format (YYYY-MM-DD). Answer with the date only: {}",
    "Convert to YYYY-MM-DD, nothing else: {}",
    "ISO date for \"{}\"?",
]


def sample(rng):
    y = rng.randint(1900, 2099)
    m = rng.randrange(12)
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    d = rng.randint(1, DAYS[m] + (1 if m == 1 and leap else 0))
    text = rng.choice(FORMATS)(y, m, d)
    prompt = rng.choice(PROMPTS).format(text)
    return {"messages": [{"role": "user", "content": prompt},
                         {"role": "assistant", "content": f"{y:04d}-{m + 1:02d}-{d:02d}"}]}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "shared/data/llm/dates"
    os.makedirs(out, exist_ok=True)
    rng = random.Random(20261205)
    seen = set()
    rows = []
    while len(rows) < 1000:
        r = sample(rng)
        key = r["messages"][0]["content"]
        if key not in seen:
            seen.add(key)
            rows.append(r)
    for name, part in [("train", rows[:800]), ("eval", rows[800:])]:
        with open(os.path.join(out, f"{name}.jsonl"), "w") as f:
            for r in part:
                f.write(json.dumps(r) + "\n")
    print(f"wrote {out}/train.jsonl (800) and {out}/eval.jsonl (200)")


main()
