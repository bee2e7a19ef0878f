// `npm run size`: the SDK's size as a page loads it — galopush.js minified by esbuild, then
// gzipped at level 9 — the figure web/sdk/README.md gives.

import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { transform } from 'esbuild';

const source = readFileSync(new URL('../galopush.js', import.meta.url), 'utf8');
const { code } = await transform(source, { minify: true, format: 'esm', target: 'es2022' });
const minified = Buffer.from(code);
const gzipped = gzipSync(minified, { level: 9 });
console.log(`galopush.js: ${Buffer.byteLength(source)} bytes, minified ${minified.length} bytes, minified + gzip ${gzipped.length} bytes`);
