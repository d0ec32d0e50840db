// Parses an AsyncAPI document with the official parser (@asyncapi/parser) and exits non-zero,
// printing every diagnostic of severity error, when the parser refuses it.
//
//   node tools/asyncapi/validate.mjs docs/asyncapi.json
//
// Warnings (the parser's style hints) are printed too but do not fail the run.
import { resolve } from 'node:path';
import { Parser, fromFile, DiagnosticSeverity } from '@asyncapi/parser';

const file = process.argv[2];
if (!file || process.argv.length > 3) {
  console.error('usage: node tools/asyncapi/validate.mjs FILE');
  process.exit(2);
}

const names = { [DiagnosticSeverity.Error]: 'error', [DiagnosticSeverity.Warning]: 'warning' };
const where = (d) => (d.path && d.path.length ? `/${d.path.join('/')}` : '(document)');

let output;
try {
  output = await fromFile(new Parser(), resolve(file)).parse();
} catch (e) {
  console.error(`error: ${file}: ${e && e.message ? e.message : e}`);
  process.exit(1);
}
const { document, diagnostics } = output;
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
for (const d of diagnostics) {
  if (d.severity === DiagnosticSeverity.Error || d.severity === DiagnosticSeverity.Warning) {
    console.error(`${names[d.severity]}: ${where(d)}: ${d.message} [${d.code}]`);
  }
}
if (errors.length || !document) {
  console.error(`${file}: refused by @asyncapi/parser (${errors.length} error(s))`);
  process.exit(1);
}
console.log(
  `${file}: valid AsyncAPI ${document.version()}: ` +
    `${document.channels().length} channels, ${document.operations().length} operations, ` +
    `${document.messages().length} messages`,
);
