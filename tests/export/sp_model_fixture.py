#!/usr/bin/python3
"""Writes tests/fixtures/llama2_sp_pieces.json: the independent reference for the SentencePiece protobuf
reader's unit test (tests/export/gguf_vocab_test.cpp), from libsentencepiece's Python binding (Debian
python3-sentencepiece; a separate process, never one that loads libtorch).
  - count, and a sha256 over every piece as "id\\tpiece\\tscore-bits-hex\\ttype\\n" (score as its float32 bits);
  - a sample of ids with their piece, score bits and type.
Types: unknown 2, control 3, unused 5, byte 6, else normal 1 (the binding has no user-defined test; the Llama 2
model has no user-defined pieces).
Usage: sp_model_fixture.py LLAMA2.model OUT.json"""
import hashlib
import json
import struct
import sys

import sentencepiece as spm


def bits(score):
    return struct.unpack("<I", struct.pack("<f", score))[0]


def main():
    sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
    n = sp.get_piece_size()

    def typ(i):
        return 2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i) else 6 if sp.is_byte(i) else 1
    h = hashlib.sha256()
    for i in range(n):
        h.update(f"{i}\t{sp.id_to_piece(i)}\t{bits(sp.get_score(i)):08x}\t{typ(i)}\n".encode())
    sample = [0, 1, 2, 3, 13, 258, 259, 260, 1000, 10994, 15043, 29871, 29889, 31999]
    out = {"count": n, "sha256": h.hexdigest(), "unk_id": sp.unk_id(), "bos_id": sp.bos_id(), "eos_id": sp.eos_id(),
           "pad_id": sp.pad_id(),
           "sample": [{"id": i, "piece": sp.id_to_piece(i), "score_bits": bits(sp.get_score(i)), "score": sp.get_score(i),
                       "type": typ(i)} for i in sample]}
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
