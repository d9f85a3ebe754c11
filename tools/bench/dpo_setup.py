#!/usr/bin/python3
"""Preference pairs for tools/bench/dpo.sh, cut from tinyshakespeare (deterministic): each pair's prompt is a
PROMPT-byte stretch of the text, its chosen response the RESP bytes that follow it, its rejected response RESP
bytes from elsewhere in the text (so chosen != rejected). With the byte tokenizer every row is about
PROMPT + RESP tokens, half of them response (target) tokens.

usage: dpo_setup.py SHARED_DIR OUT.jsonl N_PAIRS [PROMPT] [RESP]
"""
import json
import os
import random
import sys

shared, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
plen = int(sys.argv[4]) if len(sys.argv) > 4 else 112
rlen = int(sys.argv[5]) if len(sys.argv) > 5 else 112
text = open(os.path.join(shared, "data", "tinyshakespeare.txt"), encoding="utf-8").read()
rng = random.Random(11)
span = plen + rlen
with open(out, "w") as f:
    for i in range(n):
        a = rng.randrange(0, len(text) - span)
        b = rng.randrange(0, len(text) - rlen)
        chosen, rejected = text[a + plen:a + span], text[b:b + rlen]
        if chosen == rejected:
            rejected = rejected[::-1]
        f.write(json.dumps({"prompt": text[a:a + plen], "chosen": chosen, "rejected": rejected}) + "\n")
