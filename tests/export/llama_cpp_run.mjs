// The real llama.cpp, through npm node-llama-cpp@3.21.1 (its prebuilt CPU binaries, no download, no GPU),
// for the GGUF export tests. Prints one JSON object on stdout; on failure a message on stderr, exit 1.
//
//   node llama_cpp_run.mjs tokenize MODEL.gguf CORPUS [--special] [--bos] [--vocab-only]
//     -> {"bos": id|null, "eos": id|null, "add_bos": bool, "lines": [[ids], ...]}
//     Each line of CORPUS (split on "\n", the newline not part of a line, a trailing empty line dropped,
//     as tests/tokenizer/ref/read_corpus.js) through llama.cpp's common_tokenize(add_special = false,
//     parse_special = --special). --bos prepends BOS where the file says add_bos_token (what llama.cpp's
//     add_special would do). --vocab-only loads no tensors (a GGUF with only the tokenizer and hparams).
//   node llama_cpp_run.mjs greedy MODEL.gguf IDS N [--lora ADAPTER.gguf] [--lora-scale S]
//     -> {"ids": [N greedy next ids], "margins": [top1 - top2 logit per step, null if not measurable]}
//     IDS is a JSON array of prompt ids, inline ("[1,2,3]") or a file holding one. EOS/EOG tokens are
//     yielded and generation goes on (a random model does not stop), so exactly N ids come back.
//
// NODE_PATH-style lookup: the package is resolved from $ST_LLAMA_NODE_MODULES (the node_modules folder
// tools/setup.sh installs into), so the script itself can live in the source tree.
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

function fail(msg) {
  process.stderr.write(`llama_cpp_run: ${msg}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  const pos = [];
  const flags = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--lora" || a === "--lora-scale") {
      if (i + 1 >= argv.length) fail(`${a} needs a value`);
      flags[a.slice(2)] = argv[++i];
    } else if (a.startsWith("--")) {
      flags[a.slice(2)] = true;
    } else {
      pos.push(a);
    }
  }
  return { pos, flags };
}

async function loadLlamaCpp() {
  const nm = process.env.ST_LLAMA_NODE_MODULES;
  if (!nm) fail("ST_LLAMA_NODE_MODULES is not set (the node_modules folder holding node-llama-cpp)");
  const entry = path.join(nm, "node-llama-cpp", "dist", "index.js");
  if (!fs.existsSync(entry)) fail(`node-llama-cpp not found under ${nm} (tools/setup.sh st_install_llama_cpp installs it)`);
  return import(pathToFileURL(entry).href);
}

function readCorpus(file) {
  const lines = fs.readFileSync(file, "utf8").split("\n");
  if (lines.length && lines[lines.length - 1] === "") lines.pop();
  return lines;
}

function readIds(arg) {
  const text = arg.trimStart().startsWith("[") ? arg : fs.readFileSync(arg, "utf8");
  const ids = JSON.parse(text);
  if (!Array.isArray(ids) || !ids.every((x) => Number.isInteger(x) && x >= 0)) fail(`IDS must be a JSON array of token ids: ${arg}`);
  return ids;
}

async function main() {
  const { pos, flags } = parseArgs(process.argv.slice(2));
  const [cmd, modelPath] = pos;
  if (!cmd || !modelPath) fail("usage: tokenize MODEL.gguf CORPUS [--special] [--bos] [--vocab-only] | greedy MODEL.gguf IDS N [--lora F]");
  if (!fs.existsSync(modelPath)) fail(`${modelPath}: no such file`);
  const { getLlama, LlamaLogLevel } = await loadLlamaCpp();
  // build: "never": only the prebuilt binaries (offline); gpu: false: the CPU build, same on every machine.
  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error, progressLogs: false });

  if (cmd === "tokenize") {
    if (pos.length !== 3) fail("usage: tokenize MODEL.gguf CORPUS [--special] [--bos] [--vocab-only]");
    const model = await llama.loadModel({ modelPath, vocabOnly: !!flags["vocab-only"] });
    const addBos = model.tokens.shouldPrependBosToken;
    const bos = model.tokens.bos;
    const lines = readCorpus(pos[2]).map((line) => {
      const ids = Array.from(model.tokenize(line, !!flags.special));
      return flags.bos && addBos && bos != null ? [bos, ...ids] : ids;
    });
    process.stdout.write(JSON.stringify({ bos, eos: model.tokens.eos, add_bos: addBos, lines }) + "\n");
    await model.dispose();
  } else if (cmd === "greedy") {
    if (pos.length !== 4) fail("usage: greedy MODEL.gguf IDS N [--lora ADAPTER.gguf] [--lora-scale S]");
    const prompt = readIds(pos[2]);
    const n = Number(pos[3]);
    if (!Number.isInteger(n) || n < 1) fail(`N must be a positive integer: ${pos[3]}`);
    const model = await llama.loadModel({ modelPath });
    const ctxOpts = { contextSize: Math.max(64, prompt.length + n + 8), batchSize: Math.max(16, prompt.length), threads: Number(process.env.ST_LLAMA_THREADS || 1) };
    if (flags.lora) {
      if (!fs.existsSync(flags.lora)) fail(`${flags.lora}: no such file`);
      ctxOpts.lora = { adapters: [{ filePath: flags.lora, scale: flags["lora-scale"] ? Number(flags["lora-scale"]) : 1 }] };
    }
    const context = await model.createContext(ctxOpts);
    const seq = context.getSequence();
    const ids = [];
    const margins = [];
    // probabilities are softmax(logits) over the whole vocabulary (sorted): log(p1/p2) = logit1 - logit2.
    const gen = seq.evaluateWithMetadata(prompt, { probabilities: true }, { temperature: 0, yieldEogToken: true });
    for await (const out of gen) {
      ids.push(out.token);
      const it = out.probabilities.entries();
      const first = it.next().value;
      const second = it.next().value;
      const m = first && second && second[1] > 0 ? Math.log(first[1]) - Math.log(second[1]) : null;
      margins.push(m != null && Number.isFinite(m) ? m : null);
      if (ids.length >= n) break;
    }
    process.stdout.write(JSON.stringify({ ids, margins }) + "\n");
    await context.dispose();
    await model.dispose();
  } else {
    fail(`unknown command '${cmd}' (tokenize | greedy)`);
  }
  await llama.dispose();
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
