// Tokenize a .cdl file with the extension's TextMate grammar, as VS Code does (vscode-textmate +
// oniguruma, installed with vscode-tmgrammar-test), and print JSON: per line, [start, end, scopes].
// Used by scripts/preview.py to colour the documentation's picture.
"use strict";

const fs = require("fs");
const path = require("path");
const vsctm = require("vscode-textmate");
const oniguruma = require("vscode-oniguruma");

const wasm = fs.readFileSync(path.join(path.dirname(require.resolve("vscode-oniguruma")), "onig.wasm")).buffer;
const onigLib = oniguruma.loadWASM(wasm).then(() => ({
  createOnigScanner: (patterns) => new oniguruma.OnigScanner(patterns),
  createOnigString: (s) => new oniguruma.OnigString(s),
}));
const registry = new vsctm.Registry({
  onigLib,
  loadGrammar: async () => vsctm.parseRawGrammar(
    fs.readFileSync(path.join(__dirname, "..", "syntaxes", "cdl.tmLanguage.json"), "utf8"), "cdl.tmLanguage.json"),
});

registry.loadGrammar("source.cdl").then((grammar) => {
  let stack = vsctm.INITIAL;
  const out = fs.readFileSync(process.argv[2], "utf8").split("\n").map((line) => {
    const r = grammar.tokenizeLine(line, stack);
    stack = r.ruleStack;
    return r.tokens.map((t) => [t.startIndex, Math.min(t.endIndex, line.length), t.scopes]);
  });
  process.stdout.write(JSON.stringify(out));
});
