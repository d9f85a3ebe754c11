// Loads a model folder's tokenizer.json + tokenizer_config.json the way transformers.js's AutoTokenizer does
// (@lenml/tokenizers, a port of it: the class from tokenizer_class, special tokens and chat template from the
// config, apply_chat_template through @huggingface/jinja) and prints what it makes of them as one JSON line.
// usage: node lenml_folder.js NODE_MODULES FOLDER MESSAGES.json
const fs = require('fs');
const path = require('path');
const { TokenizerLoader } = require(path.resolve(process.argv[2], '@lenml/tokenizers'));
const dir = process.argv[3];
const read = (name) => JSON.parse(fs.readFileSync(path.join(dir, name), 'utf8'));
const tok = TokenizerLoader.fromPreTrained({ tokenizerJSON: read('tokenizer.json'), tokenizerConfig: read('tokenizer_config.json') });
const messages = JSON.parse(fs.readFileSync(process.argv[4], 'utf8'));
process.stdout.write(JSON.stringify({
  class: tok.constructor.name,
  bos_token: tok.bos_token, eos_token: tok.eos_token, unk_token: tok.unk_token, pad_token: tok.pad_token ?? null,
  chat: tok.apply_chat_template(messages, { tokenize: false }),
  chat_generation: tok.apply_chat_template(messages.slice(0, -1), { tokenize: false, add_generation_prompt: true }),
  hello: tok.encode('Hello world'),
}) + '\n');
