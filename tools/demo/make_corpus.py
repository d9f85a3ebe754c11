#!/usr/bin/python3
"""Writes a small generic text corpus ({"text": ...} JSONL) for the demo's brief pre-training: simple
English-like sentences from an embedded word list, with capitalized sentence starts and names, so the base
model learns to write words (lower and upper case) but never sees the fine-tuning task. Deterministic.
Usage: make_corpus.py OUT.jsonl [N_DOCS]"""
import json
import random
import sys

WORDS = """the a an this that my your our their his her its one two three some every no
cat dog bird fish horse cow sheep goat mouse fox wolf bear lion tiger owl duck frog bee ant
man woman child girl boy king queen farmer teacher doctor baker sailor pilot friend mother father
house garden river forest hill road town city field lake sea ship boat car train bridge door window
book letter song story game map key box cup bread milk apple water fire stone tree flower sun moon
sees finds likes wants takes gives makes reads writes sings eats drinks opens closes builds paints
carries follows visits helps calls meets loves keeps holds brings sells buys watches hears knows
big small old new red blue green yellow happy sad quiet loud fast slow warm cold bright dark long short
in on under over near behind beside into from with without across along through
and but then so because while when after before""".split()
ART = "the a an this that my your our their his her its one two three some every no".split()
NOUNS = WORDS[WORDS.index("cat"):WORDS.index("sees")]
VERBS = WORDS[WORDS.index("sees"):WORDS.index("big")]
ADJS = WORDS[WORDS.index("big"):WORDS.index("in")]
PREPS = WORDS[WORDS.index("in"):WORDS.index("and")]
CONJ = WORDS[WORDS.index("and"):]
NAMES = "Anna Ben Carla David Emma Felix Grace Hugo Iris Jack Kim Leo Mia Nora Oscar Paul Rosa Sam Tina Uma".split()
PLACES = "Paris London Rome Oslo Lima Cairo Delhi Tokyo Berlin Madrid Vienna Dublin".split()


def noun_phrase(rng, name=None):
    r = rng.random()
    if name and r < 0.5:
        return name
    if r < 0.2:
        return rng.choice(NAMES)
    art = rng.choice(ART)
    adj = rng.choice(ADJS) + " " if rng.random() < 0.4 else ""
    return f"{art} {adj}{rng.choice(NOUNS)}"


def clause(rng, name=None):
    s = f"{noun_phrase(rng, name)} {rng.choice(VERBS)} {noun_phrase(rng, name)}"
    if rng.random() < 0.4:
        s += f" {rng.choice(PREPS)} {rng.choice(PLACES) if rng.random() < 0.3 else noun_phrase(rng, name)}"
    return s


def sentence(rng, name=None):
    s = clause(rng, name)
    if rng.random() < 0.3:
        s += f" {rng.choice(CONJ)} {clause(rng, name)}"
    return s[0].upper() + s[1:] + rng.choice(".....!?")


INTROS = ["{np} is called {w}.", "The {n} is named {w}.", "They call it {w}.", "A new word: {w}.",
          "{np} says {w}.", "Here is {w}."]


def document(rng):
    if rng.random() < 0.4:
        return " ".join(sentence(rng) for _ in range(rng.randint(1, 2)))
    # A made-up lowercase word that comes back later in the document: the corpus teaches copying,
    # never the fine-tuning task.
    w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8)))
    intro = rng.choice(INTROS).format(np=noun_phrase(rng), n=rng.choice(NOUNS), w=w)
    intro = intro[0].upper() + intro[1:]
    return " ".join([intro] + [sentence(rng, w) for _ in range(rng.randint(1, 2))])


def main():
    out, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    rng = random.Random(11)
    with open(out, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": document(rng)}) + "\n")
    print(f"make_corpus: {n} generic documents -> {out}")


if __name__ == "__main__":
    main()
