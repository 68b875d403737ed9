// The client in headless Chromium (Debian's chromium, driven by
// playwright-core; nothing is downloaded): a page served by postern itself
// (through `postern expose`), the same page on another origin, and the chat
// example driven as a person would.
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { createReadStream, existsSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { createInterface } from 'node:readline';
import { extname, join, normalize, sep } from 'node:path';
import { test } from 'node:test';
import { chromium } from 'playwright-core';
import { Postern } from '../dist/index.js';
import { jsDir, postern, serve } from './postern.js';

/** The system Chromium: $CHROMIUM, else chromium on the PATH. */
function findChromium() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  for (const name of ['chromium', 'chromium-browser']) {
    try {
      return execFileSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).trim();
    } catch {}
  }
  return '';
}

const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8' };

/** A static file server of clients/js on a kernel-chosen loopback port. */
async function files(t) {
  const srv = createServer((req, res) => {
    const path = normalize(join(jsDir, decodeURIComponent(new URL(req.url, 'http://x').pathname)));
    if (!path.startsWith(jsDir + sep) || !existsSync(path) || !statSync(path).isFile()) {
      res.writeHead(404);
      return res.end('not found');
    }
    res.writeHead(200, { 'Content-Type': types[extname(path)] ?? 'application/octet-stream' });
    createReadStream(path).pipe(res);
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  t.after(() => {
    srv.closeAllConnections();
    return new Promise((r) => srv.close(r));
  });
  return `http://127.0.0.1:${srv.address().port}`;
}

/** Runs `postern expose` for local under name; resolves once it forwards. */
async function expose(t, server, name, local) {
  const proc = spawn(await postern(), ['expose', '--server', server, '--name', name, local], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  proc.stderr.on('data', (d) => (log += d));
  const exited = new Promise((r) => proc.once('exit', r));
  t.after(() => {
    proc.kill('SIGTERM');
    return exited;
  });
  for await (const line of createInterface({ input: proc.stdout })) {
    if (/https?:\/\//.test(line)) return; // "Forwarding <public URL> -> <local>"
  }
  throw new Error(`postern expose ended before forwarding:\n${log}`);
}

const chromiumPath = findChromium();
const skip = chromiumPath || process.env.CI ? false : 'no chromium on this machine (apt-get install chromium); CI installs it';

test('the client in headless Chromium', { skip }, async (t) => {
  assert.ok(chromiumPath, 'CI must have chromium: .ci/run installs it');
  const srv = await serve(t);
  const static_ = await files(t);
  await expose(t, srv.url, 'page', static_);

  const browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: [
      ...(process.getuid?.() === 0 ? ['--no-sandbox'] : []),
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  t.after(() => browser.close());
  const context = await browser.newContext(); // a fresh, empty profile
  t.after(() => context.close());

  const roundTrip = async (url, origin) => {
    const page = await context.newPage();
    const problems = [];
    page.on('pageerror', (e) => problems.push(e.message));
    await page.goto(url);
    const r = await page.evaluate(() => window.result);
    await page.close();
    assert.equal(r.error, undefined, `${r.error} ${problems.join('; ')}`);
    assert.equal(r.server, origin);
    assert.equal(r.channel.data, 'from the page ✓');
    assert.match(r.channel.id, /^\d+-\d+$/);
    assert.deepEqual(r.tunnel.body, { hello: 'page' });
    assert.equal(r.tunnel.got, r.tunnel.sent);
    assert.equal(r.tunnel.type, 'application/json');
    assert.equal(r.status, 'gone', 'acknowledged from the page');
    assert.deepEqual(r.inbox, { sent: 1, origin: 'page', body: { x: 1 } });
    assert.equal(r.sockets.length, 1, 'the browser subscribed over a websocket');
    assert.match(r.sockets[0], new RegExp(`^ws://${srv.url.slice(7)}/c/browser\\?since=now$`));
  };

  await t.test('a page served by postern (through postern expose) round-trips a channel, a tunnel and an inbox message', async () => {
    await roundTrip(`${srv.url}/proxy/request/page/test/browser/roundtrip.html`, srv.url);
  });

  await t.test('the same page on another origin calls postern cross-origin', async () => {
    await roundTrip(`${static_}/test/browser/roundtrip.html?server=${encodeURIComponent(srv.url)}`, srv.url);
  });

  await t.test('examples/chat.html: a person sends a message and sees it, and sees what others send', async () => {
    const room = new Postern(srv.url).channel('/room');
    const page = await context.newPage();
    await page.goto(`${static_}/examples/chat.html?server=${encodeURIComponent(srv.url)}&channel=/room`);
    await page.locator('#state', { hasText: 'live' }).waitFor();
    await page.fill('#name', 'ada');
    await page.fill('#text', 'hello <b>all</b>');
    await page.click('#send');
    await page.locator('#log li', { hasText: 'hello <b>all</b>' }).waitFor();
    await room.publish(JSON.stringify({ name: 'node', text: 'from node' }));
    await page.locator('#log li', { hasText: 'from node' }).waitFor();
    const items = await page.locator('#log li').allTextContents();
    assert.deepEqual(items, ['adahello <b>all</b>', 'nodefrom node'], 'names and texts, the markup shown as text');
    assert.equal(await page.inputValue('#text'), '', 'the input is cleared after sending');
    await page.close();
  });
});
