// The published declarations work for a TypeScript user: a consumer of the
// package compiles against dist/index.d.ts, and misuse fails to.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { jsDir } from './postern.js';

test('a TypeScript consumer compiles against the emitted .d.ts', async () => {
  const tsc = join(jsDir, 'node_modules', '.bin', 'tsc');
  const r = await promisify(execFile)(tsc, ['-p', 'test/fixtures/tsconfig.json'], { cwd: jsDir }).catch((e) => e);
  assert.equal(r.code ?? 0, 0, `${r.stdout}${r.stderr}`);
});
