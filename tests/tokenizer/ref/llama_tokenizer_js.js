// Reference ids for the Llama 2 SentencePiece model: llama-tokenizer-js (independent JS encoder with the
// Llama 1/2 vocabulary built in). encode(text, add_bos_token=false, add_preceding_space=true).
// It returns [] for an empty string, as SentencePiece does.
// usage: node llama_tokenizer_js.js NODE_MODULES CORPUS
const path = require('path');
const readCorpus = require('./read_corpus');
const mod = require(path.resolve(process.argv[2], 'llama-tokenizer-js'));
const tok = mod.default || mod;
const out = readCorpus(process.argv[3]).map((l) => (tok.encode(l, false, true) || []).join(' '));
process.stdout.write(out.join('\n') + '\n');
