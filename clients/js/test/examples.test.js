// The examples, run as a user would: plain node, no flags.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { test } from 'node:test';
import { Postern } from '../dist/index.js';
import { jsDir, serve } from './postern.js';

/** Runs a node script without flags; lines() yields its stdout lines. */
function node(t, ...args) {
  const proc = spawn(process.execPath, args, { cwd: jsDir, stdio: ['ignore', 'pipe', 'pipe'], execArgv: [] });
  let stderr = '';
  proc.stderr.on('data', (d) => (stderr += d));
  const exited = once(proc, 'exit');
  t.after(() => {
    if (proc.exitCode === null) proc.kill();
  });
  const lines = createInterface({ input: proc.stdout })[Symbol.asyncIterator]();
  return { proc, exited, lines, stderr: () => stderr };
}

test('examples/tour.mjs runs every call of the tour on plain Node', async (t) => {
  const srv = await serve(t);
  const run = node(t, 'examples/tour.mjs', srv.url);
  const out = [];
  for await (const l of run.lines) out.push(l);
  const [code] = await run.exited;
  assert.equal(code, 0, run.stderr());
  assert.match(out[0], /^channel \d+-\d+ hello gap=false$/);
  assert.deepEqual(out.slice(1), [
    'tunnel true job 1 text/plain',
    'reply ping -> pong',
    'job 1',
    'job 2',
    'inbox msg from olivia {"hi":1}',
    'inbox ack by george',
  ]);
  assert.equal(await new Postern(srv.url).tunnel('jobs').len(), 0, 'every job was acknowledged');
});

test('examples/worker.mjs drains a tunnel, answers requests and stops on SIGINT', async (t) => {
  const srv = await serve(t);
  const p = new Postern(srv.url);
  const run = node(t, 'examples/worker.mjs', srv.url, 'work');
  const next = async () => (await run.lines.next()).value;
  assert.equal(await next(), `draining work on ${srv.url}`);
  const { id } = await p.tunnel('work').send('job 1', { contentType: 'text/plain' });
  assert.equal(await next(), `${id} text/plain: job 1`);
  const reply = await p.tunnel('work').request('ping', { wait: 10 });
  assert.equal(reply.text(), 'pong');
  assert.match(await next(), /^\d+-\d+ .*: ping$/);
  run.proc.kill('SIGINT');
  assert.equal(await next(), 'stopped');
  const [code] = await run.exited;
  assert.equal(code, 0, run.stderr());
  assert.equal(await p.tunnel('work').len(), 0);
});
