// npm test: builds postern once from this checkout, then runs every
// test/*.test.js with node's test runner against it (POSTERN_BIN).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jsDir, repoRoot } from './postern.js';

const dir = mkdtempSync(join(tmpdir(), 'postern-bin-'));
let code = 1;
try {
  const bin = join(dir, 'postern');
  const build = spawnSync('go', ['build', '-o', bin, './cmd/postern'], { cwd: repoRoot, stdio: 'inherit' });
  if (build.status !== 0) throw new Error(`go build failed (${build.error?.message ?? build.status})`);
  const files = readdirSync(join(jsDir, 'test'))
    .filter((f) => f.endsWith('.test.js'))
    .map((f) => join('test', f));
  // A test that hangs fails after its timeout instead of holding CI, and the
  // runner exits when the tests are done even if a failed one left a timer or
  // a socket behind.
  const help = spawnSync(process.execPath, ['--help'], { encoding: 'utf8' }).stdout ?? '';
  const guards = ['--test-timeout=300000', '--test-force-exit'].filter((f) => help.includes(f.split('=')[0]));
  const run = spawnSync(process.execPath, ['--test', ...guards, ...process.argv.slice(2), ...files], {
    cwd: jsDir,
    stdio: 'inherit',
    env: { ...process.env, POSTERN_BIN: bin },
  });
  code = run.status ?? 1;
} catch (e) {
  console.error(e.message);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
process.exit(code);
