// Retry rules, against a small local server that answers what each test
// scripts: the real server does not fail on demand.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { test } from 'node:test';
import { Postern, PosternError } from '../dist/index.js';

/**
 * A server on a kernel-chosen loopback port; answer(req, n) handles the nth
 * request (from 0). It records every request: method, url, headers, time.
 */
async function fake(t, answer) {
  const seen = [];
  const waiters = [];
  const srv = createServer((req, res) => {
    const n = seen.length;
    seen.push({ method: req.method, url: req.url, headers: req.headers, at: performance.now() });
    waiters.splice(0).forEach((f) => f());
    req.resume();
    req.on('end', () => answer(req, res, n));
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => srv.close(r)));
  t.after(() => srv.closeAllConnections());
  const url = `http://127.0.0.1:${srv.address().port}`;
  const requests = (k) => (seen.length >= k ? Promise.resolve() : new Promise((r) => waiters.push(r)).then(() => requests(k)));
  return { url, seen, requests };
}

const fast = { minDelay: 1, maxDelay: 5000 };

function created(res) {
  res.writeHead(201, { 'X-Message-Id': '1-0' });
  res.end();
}

test('a retried tunnel send reuses its Idempotency-Key; each send has its own', async (t) => {
  const f = await fake(t, (req, res, n) => {
    if (n === 0 || n === 2) {
      res.writeHead(503, { 'Content-Type': 'text/plain' });
      return res.end('storage unavailable');
    }
    created(res);
  });
  const p = new Postern(f.url, { retry: fast });
  assert.equal((await p.tunnel('jobs').send('one')).id, '1-0');
  await p.tunnel('jobs').send('two');
  const keys = f.seen.map((s) => s.headers['idempotency-key']);
  assert.equal(f.seen.length, 4);
  assert.match(keys[0], /^[A-Za-z0-9_-]{43}$/);
  assert.equal(keys[1], keys[0], 'the retry carries the same key');
  assert.equal(keys[3], keys[2]);
  assert.notEqual(keys[2], keys[0], 'a new send gets a new key');

  await p.tunnel('jobs').send('three', { idempotencyKey: 'my-key-000001' });
  assert.equal(f.seen[4].headers['idempotency-key'], 'my-key-000001');
});

test('a send without an idempotency key is not retried when its outcome is unknown', async (t) => {
  const f = await fake(t, (req, res) => {
    res.writeHead(503);
    res.end('maybe stored');
  });
  const p = new Postern(f.url, { retry: fast });
  const e = await p.tunnel('jobs').send('x', { idempotencyKey: false }).catch((e) => e);
  assert.ok(e instanceof PosternError);
  assert.equal(e.status, 503);
  assert.equal(e.message, 'postern: 503 maybe stored');
  assert.equal(f.seen.length, 1);
  assert.equal(f.seen[0].headers['idempotency-key'], undefined);
});

test('publish is not retried on 503 (it would be delivered twice) but is on 429', async (t) => {
  const f = await fake(t, (req, res, n) => {
    if (n === 0) res.writeHead(503);
    else if (n === 1) res.writeHead(429, { 'Retry-After': '0' });
    else res.writeHead(200);
    res.end();
  });
  const p = new Postern(f.url, { retry: fast });
  await assert.rejects(p.channel('/x').publish('hi'), { status: 503 });
  assert.equal(f.seen.length, 1);
  await p.channel('/x').publish('hi');
  assert.equal(f.seen.length, 3, 'a 429 means nothing was done: retried');
});

test('Retry-After is honoured', async (t) => {
  const f = await fake(t, (req, res, n) => {
    if (n === 0) {
      res.writeHead(429, { 'Retry-After': '1' });
      return res.end('slow down');
    }
    res.writeHead(204, { 'X-Queue-Size': '7' });
    res.end();
  });
  const p = new Postern(f.url, { retry: fast });
  assert.equal(await p.tunnel('q').len(), 7);
  const waited = f.seen[1].at - f.seen[0].at;
  assert.ok(waited >= 990, `the retry came ${waited.toFixed(0)} ms after a Retry-After of 1 s`);
});

test('a Retry-After longer than maxDelay is not waited for: the error carries it', async (t) => {
  const f = await fake(t, (req, res) => {
    res.writeHead(503, { 'Retry-After': '120' });
    res.end('draining');
  });
  const p = new Postern(f.url, { retry: fast });
  const e = await p.tunnel('q').len().catch((e) => e);
  assert.equal(e.status, 503);
  assert.equal(e.retryAfter, 120);
  assert.equal(f.seen.length, 1);
});

test('idempotent calls are retried after a lost connection, up to attempts', async (t) => {
  const f = await fake(t, (req, res, n) => {
    if (n < 2) return req.socket.destroy();
    res.writeHead(200, { 'X-Message-Id': '5-1', 'Content-Type': 'text/plain' });
    res.end('hello');
  });
  const p = new Postern(f.url, { retry: { ...fast, attempts: 3 } });
  const m = await p.tunnel('q').receive();
  assert.equal(m.text(), 'hello');
  assert.equal(f.seen.length, 3);

  const g = await fake(t, (req) => req.socket.destroy());
  const e = await new Postern(g.url, { retry: { ...fast, attempts: 3 } }).tunnel('q').ack('1-0').catch((e) => e);
  assert.ok(e instanceof PosternError);
  assert.equal(e.status, 0, 'no answer: status 0');
  assert.ok(e.cause, 'the network error is the cause');
  assert.equal(g.seen.length, 3);
});

test('retry: false makes one try; a call option overrides the client', async (t) => {
  const f = await fake(t, (req, res) => {
    res.writeHead(503);
    res.end();
  });
  const p = new Postern(f.url, { retry: false });
  await assert.rejects(p.tunnel('q').len(), { status: 503 });
  assert.equal(f.seen.length, 1);
  await assert.rejects(p.tunnel('q').len({ retry: { ...fast, attempts: 2 } }), { status: 503 });
  assert.equal(f.seen.length, 3);
});

test('an abort during the wait before a retry rejects at once with the reason', async (t) => {
  const f = await fake(t, (req, res) => {
    res.writeHead(503, { 'Retry-After': '20' });
    res.end();
  });
  const p = new Postern(f.url);
  const ac = new AbortController();
  const call = p.tunnel('q').len({ signal: ac.signal });
  await f.requests(1);
  const started = performance.now();
  ac.abort(new Error('user gave up'));
  await assert.rejects(call, { message: 'user gave up' });
  assert.ok(performance.now() - started < 5000);
  assert.equal(f.seen.length, 1);
});

test('the token goes in the Authorization header; the base path is kept', async (t) => {
  const f = await fake(t, (req, res) => created(res));
  const p = new Postern(f.url + '/prefix/', { token: 's3cret' });
  await p.tunnel('a b').send('x');
  assert.equal(f.seen[0].headers.authorization, 'Bearer s3cret');
  assert.equal(f.seen[0].url, '/prefix/t/a%20b');
  assert.equal(p.url, f.url + '/prefix');
});

test('a websocket-less subscription resumes with since after the last id (event streams)', async (t) => {
  // The first stream sends one message and ends as a server shutting down
  // does; the second must ask for what came after that message.
  const f = await fake(t, (req, res, n) => {
    res.writeHead(200, { 'Content-Type': 'text/event-stream' });
    if (n === 0) return res.end('retry: 3000\n\nid: 10-0\ndata: first\n\nevent: end\ndata: server shutting down\n\n');
    res.write('id: 11-0\ndata: second\r\n\r\n: keep-alive\n\nevent: binary\nid: 12-0\ndata: AAH/\n\n');
  });
  const errors = [];
  const p = new Postern(f.url, { WebSocket: null });
  const sub = p.channel('/n').subscribe({ since: '0', reconnect: { minDelay: 1, maxDelay: 10 }, onError: (e) => errors.push(e.message) });
  const got = [];
  for await (const m of sub) {
    got.push(m);
    if (got.length === 3) break;
  }
  assert.deepEqual(got.slice(0, 2).map((m) => [m.id, m.data]), [['10-0', 'first'], ['11-0', 'second']]);
  assert.deepEqual([...got[2].data], [0, 1, 255]);
  assert.equal(got[2].binary, true);
  assert.deepEqual(f.seen.map((s) => s.url), ['/c/n?since=0', '/c/n?since=10-0']);
  assert.equal(f.seen[0].headers.accept, 'text/event-stream');
  assert.deepEqual(errors, ['postern: server ended the stream: server shutting down']);
});

test('a silent event stream is dropped after two keep-alive periods and made again', async (t) => {
  const f = await fake(t, (req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/event-stream' });
    res.write('retry: 3000\n\n'); // then nothing
  });
  const p = new Postern(f.url, { WebSocket: null });
  const errors = [];
  const sub = p.channel('/quiet').subscribe({ keepAlive: 50, reconnect: { minDelay: 1, maxDelay: 10 }, onError: (e) => errors.push(e.message) });
  await f.requests(2);
  sub.close();
  assert.equal(errors[0], 'postern: no keep-alive from the server');
});
