// Reference ids for GPT-2 BPE: gpt-3-encoder's encode() on each corpus line.
// usage: node gpt3_encoder.js NODE_MODULES CORPUS  -> one line of space-separated ids per corpus line
const path = require('path');
const readCorpus = require('./read_corpus');
const enc = require(path.resolve(process.argv[2], 'gpt-3-encoder'));
const out = readCorpus(process.argv[3]).map((l) => enc.encode(l).join(' '));
process.stdout.write(out.join('\n') + '\n');
