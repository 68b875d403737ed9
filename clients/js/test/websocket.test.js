// Channels over WebSocket in Node: a child process with the global
// WebSocket of `node --experimental-websocket` (Node 22 has it without the
// flag), across a server restart.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { test } from 'node:test';
import { Postern } from '../dist/index.js';
import { jsDir, serve, tempDir } from './postern.js';

test('a websocket subscription gets text and binary messages and carries on across a restart', async (t) => {
  const dir = await tempDir(t);
  let srv = await serve(t, { store: `file:${dir}` });
  const ch = new Postern(srv.url).channel('/ws');
  const child = spawn(process.execPath, ['--experimental-websocket', '--no-warnings', 'test/fixtures/ws-child.mjs', srv.url, '/ws'], {
    cwd: jsDir,
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const exited = once(child, 'exit');
  t.after(() => child.exitCode === null && child.kill());
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const next = async () => (await lines.next()).value;
  /** The next message line, skipping connection errors. */
  const message = async () => {
    for (;;) {
      const l = await next();
      if (l === 'open') continue;
      const m = JSON.parse(l);
      if (!m.error) return m;
    }
  };

  assert.equal(await next(), 'open');
  await ch.publish('text');
  const a = await message();
  assert.equal(a.data, 'text');
  assert.match(a.id, /^\d+-\d+$/);
  child.stdin.write('binary\n');
  const b = await message();
  assert.equal(b.binary, true);
  assert.deepEqual(b.data, [0, 1, 255]);

  await srv.stop(); // websockets close with 1001
  const closed = JSON.parse(await next());
  assert.match(closed.error, /connection closed \(1001/);
  srv = await serve(t, { store: `file:${dir}`, port: srv.port });
  for (;;) if ((await next()) === 'open') break; // failed tries meanwhile print errors
  await ch.publish('after');
  let c = await message();
  if (c.gap) c = await message();
  assert.equal(c.data, 'after');
  child.stdin.write('quit\n');
  const [code] = await exited;
  assert.equal(code, 0);
});
