// Test helpers: build the postern binary from this checkout and run real
// servers on kernel-chosen 127.0.0.1 ports.
import { spawn, execFile } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

export const jsDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const repoRoot = resolve(jsDir, '../..');

/** A temporary directory, removed by the returned cleanup. */
export async function tempDir(t, prefix = 'postern-js-') {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

let built;

/**
 * The postern binary: $POSTERN_BIN, or built once per test process with
 * `go build` (the Go build cache makes later builds a link).
 */
export function postern() {
  if (process.env.POSTERN_BIN) return Promise.resolve(process.env.POSTERN_BIN);
  built ??= (async () => {
    const dir = await mkdtemp(join(tmpdir(), 'postern-bin-'));
    process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
    const bin = join(dir, 'postern');
    await promisify(execFile)('go', ['build', '-o', bin, './cmd/postern'], { cwd: repoRoot });
    return bin;
  })();
  return built;
}

// The banner of a text log ("postern VERSION listening on http://ADDR (...)") or an older log line.
const listenRE = /postern (?:\S+ )?listening(?: on https?:\/\/|"? addr=)(\S+)/;

/**
 * Starts `postern serve` with args on 127.0.0.1 (port 0: the kernel's
 * choice) and resolves once it listens. The server is stopped after the
 * test t.
 */
export async function serve(t, { args = [], port = 0, env = {}, store = 'memory' } = {}) {
  const bin = await postern();
  const proc = spawn(bin, ['serve', '--listen', `127.0.0.1:${port}`, '--store', store, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const exited = new Promise((r) => proc.once('exit', (code, sig) => r({ code, sig })));
  let log = '';
  const addr = await new Promise((resolve, reject) => {
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (s) => {
      log += s;
      const m = listenRE.exec(log);
      if (m) resolve(m[1]);
    });
    exited.then(({ code }) => reject(new Error(`postern serve exited (${code}) before listening:\n${log}`)));
  });
  const srv = {
    url: `http://${addr}`,
    port: +addr.split(':').pop(),
    proc,
    get log() {
      return log;
    },
    /** Stops the server (SIGTERM: it drains) and waits for it to exit. */
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      return exited;
    },
  };
  t.after(() => srv.stop());
  return srv;
}

/** Resolves with the first value passed to the returned callback. */
export function signal() {
  let fire;
  const p = new Promise((r) => (fire = r));
  return [p, (v) => fire(v)];
}
