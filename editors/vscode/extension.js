// The CDL extension: colouring comes from syntaxes/cdl.tmLanguage.json; everything else
// (diagnostics, shape hints, hover, completion, navigation, formatting) from `convdsl lsp`,
// started over stdio by the language client below.
"use strict";

const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const command = vscode.workspace.getConfiguration("cdl").get("server.command", ["convdsl", "lsp"]);
  const serverOptions = { command: command[0], args: command.slice(1), transport: TransportKind.stdio };
  const clientOptions = {
    documentSelector: [
      { scheme: "file", language: "cdl" },
      { scheme: "untitled", language: "cdl" },
    ],
  };
  client = new LanguageClient("cdl", "CDL language server", serverOptions, clientOptions);
  context.subscriptions.push(
    vscode.commands.registerCommand("cdl.restartServer", () => client.restart()),
  );
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
