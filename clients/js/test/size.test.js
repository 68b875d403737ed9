// The size budget: the whole package, bundled for browsers, minified and
// gzipped, stays under 8 KB.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';
import { jsDir } from './postern.js';

const BUDGET = 8 * 1024;

test('the browser bundle is under 8 KB minified and gzipped', async (t) => {
  const out = await build({
    entryPoints: [`${jsDir}/src/index.ts`],
    bundle: true,
    minify: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    write: false,
    logLevel: 'silent',
  });
  const js = out.outputFiles[0].contents;
  const gz = gzipSync(js, { level: 9 }).length;
  t.diagnostic(`bundle: ${js.length} bytes minified, ${gz} bytes gzipped (budget ${BUDGET})`);
  assert.ok(gz < BUDGET, `${gz} bytes gzipped is over the ${BUDGET}-byte budget`);
  // Every export is in it: nothing was tree-shaken away by mistake.
  const mod = await import(`data:text/javascript;base64,${Buffer.from(js).toString('base64')}`);
  for (const name of ['Postern', 'PosternError', 'QueueFullError', 'ForbiddenError', 'TooLargeError', 'NotPendingError', 'newIdempotencyKey']) {
    assert.equal(typeof mod[name], 'function', name);
  }
});
