"""Checks live edge answers against the offline evaluation of the same expert/rejector pair:
every input must be answered by the side the offline rule picks (remote when it offloads), with
the same label, and nothing may fall back. Prints one summary line per file.
usage: check-answers.py OFFLINE.jsonl EDGE.jsonl [EDGE.jsonl ...]
"""
import json
import sys

offline = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for path in sys.argv[2:]:
    live = [json.loads(l) for l in open(path) if l.strip()]
    if len(live) != len(offline):
        sys.exit(f"{path}: {len(live)} answers, the offline evaluation has {len(offline)}")
    bad = []
    for i, (o, e) in enumerate(zip(offline, live)):
        want = "remote" if o["offload"] else "local"
        if e["source"] != want or e["label"] != o["label"]:
            bad.append((i, want, o["label"], e["source"], e["label"], e.get("fallback_reason")))
    remote = sum(e["source"] == "remote" for e in live)
    acc = sum(e["label"] == o["true_label"] for o, e in zip(offline, live)) / len(live)
    print(f"{path}: {len(live)} answers, {remote} from the cloud container, "
          f"accuracy {100 * acc:.2f}%, {len(bad)} differ from the offline evaluation")
    if remote == 0:
        sys.exit(f"{path}: nothing was offloaded")
    if bad:
        sys.exit(f"{path}: first differences (input, want source, want label, got source, got label, reason): {bad[:5]}")
