"""Writes data/analysis-demo/texts.jsonl: short texts from four domains (code, dialogue,
arithmetic, legal-style prose), 40 each, composed from templates written for this project.
Deterministic; rerun to regenerate. usage: make_demo_texts.py OUT.jsonl"""
import json, random, sys

rng = random.Random(7)
names = ["total", "count", "items", "buffer", "result", "offset", "values", "index", "scores", "rows"]
funcs = ["load", "parse", "merge", "scale", "update", "render", "filter", "encode", "split", "flush"]
people = ["Ana", "Ben", "Chloe", "Dev", "Elif", "Femi", "Greta", "Hugo", "Ines", "Jun"]
things = ["the train", "dinner", "the meeting", "your sister", "the weather", "the new flat", "work", "the concert"]
parties = ["the Supplier", "the Customer", "the Licensee", "the Tenant", "the Contractor", "the Company"]
duties = ["indemnify and hold harmless", "give written notice to", "pay all sums due to", "keep confidential all information received from"]

def code():
    f, a, b = rng.choice(funcs), rng.choice(names), rng.choice(names)
    return rng.choice([
        f"def {f}_{a}({b}):\n    return [x * 2 for x in {b} if x > 0]",
        f"for i in range(len({a})):\n    {b}[i] = {f}({a}[i])",
        f"if {a} is None:\n    raise ValueError('{f}: missing {a}')",
        f"let {a} = {b}.iter().map(|x| {f}(x)).collect::<Vec<_>>();",
        f"while {a} < len({b}):\n    {a} += 1\n    {f}({b})",
    ])

def dialogue():
    p, t = rng.choice(people), rng.choice(things)
    q = rng.choice([x for x in people if x != p])
    return rng.choice([
        f"{p}: Did you hear about {t}?\n{q}: No, what happened?",
        f"{p}: Sorry I'm late, {t} took forever.\n{q}: Don't worry, we just started.",
        f"{p}: How was {t}?\n{q}: Honestly, better than I expected!",
        f"{p}: Can you call me after {t}?\n{q}: Sure, around eight?",
        f"{p}: I can't believe {t} is tomorrow.\n{q}: Me neither, time flies.",
    ])

def arithmetic():
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    return rng.choice([
        f"{a} + {b} = {a + b}",
        f"What is {a} times {b}? The answer is {a * b}.",
        f"{a * b} divided by {b} equals {a}.",
        f"If x + {a} = {a + b}, then x = {b}.",
        f"{a} - {b} = {a - b}",
    ])

def capitalised(options):
    t = rng.choice(options)
    return t[0].upper() + t[1:]


def legal():
    p, d = rng.choice(parties), rng.choice(duties)
    q = rng.choice([x for x in parties if x != p])
    n = rng.randint(7, 90)
    return capitalised([
        f"{p} shall {d} {q} within {n} days of the Effective Date.",
        f"Notwithstanding clause {n}, {p} shall not be liable for any indirect or consequential loss.",
        f"This Agreement may be terminated by {p} upon {n} days' written notice to {q}.",
        f"Any dispute arising hereunder shall be referred to arbitration, and {p} shall bear its own costs.",
        f"{p} warrants that it has full power and authority to enter into this Agreement with {q}.",
    ])

with open(sys.argv[1], "w") as out:
    for domain, make in [("code", code), ("dialogue", dialogue), ("arithmetic", arithmetic), ("legal", legal)]:
        seen = set()
        while len(seen) < 40:
            t = make()
            if t not in seen:
                seen.add(t)
                out.write(json.dumps({"domain": domain, "text": t}) + "\n")
