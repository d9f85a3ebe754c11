// Shared by the reference scripts: the corpus as an array of lines (the newline is not part of a line).
const fs = require('fs');
module.exports = function readCorpus(file) {
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  if (lines.length && lines[lines.length - 1] === '') lines.pop();
  return lines;
};
