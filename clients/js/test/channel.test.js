import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Postern, PosternError, TooLargeError } from '../dist/index.js';
import { serve, signal, tempDir } from './postern.js';

/** Subscribes and resolves once the connection is open. */
async function open(ch, opts = {}) {
  const [opened, fire] = signal();
  const sub = ch.subscribe({ ...opts, onOpen: fire });
  await opened;
  return sub;
}

/** Takes the next n messages of an iterator. */
async function take(it, n) {
  const out = [];
  while (out.length < n) {
    const { value, done } = await it.next();
    if (done) break;
    out.push(value);
  }
  return out;
}

test('channels against postern serve (Server-Sent Events on plain Node)', async (t) => {
  const srv = await serve(t, { args: ['--channels-history', '3'] });
  const p = new Postern(srv.url);

  await t.test('Node 20 without flags has no WebSocket: auto picks event streams', () => {
    if (process.versions.node.split('.')[0] === '20') assert.equal(typeof globalThis.WebSocket, 'undefined');
  });

  await t.test("subscribe from 'now' then publish", async () => {
    const ch = p.channel('/news');
    const sub = await open(ch);
    const it = sub[Symbol.asyncIterator]();
    await ch.publish('hello');
    await ch.publish('two\nlines');
    const [a, b] = await take(it, 2);
    assert.equal(a.data, 'hello');
    assert.equal(a.gap, false);
    assert.equal(a.binary, false);
    assert.match(a.id, /^\d+-\d+$/);
    assert.equal(b.data, 'two\nlines');
    assert.equal(sub.lastId, b.id);
    sub.close();
    assert.deepEqual(await it.next(), { value: undefined, done: true }, 'close ends the loop');
  });

  await t.test("since '0' replays the kept history, since an id what came after it", async () => {
    const ch = p.channel('hist'); // a leading '/' is added
    assert.equal(ch.path, '/hist');
    const live = await open(ch); // history is kept for channels with subscribers
    await ch.publish('a');
    await ch.publish('b');
    const [a, b] = await take(live[Symbol.asyncIterator](), 2);
    live.close();

    const replay = ch.subscribe({ since: '0' });
    const all = await take(replay[Symbol.asyncIterator](), 2);
    assert.deepEqual(all.map((m) => m.data), ['a', 'b']);
    replay.close();
    const after = ch.subscribe({ since: a.id });
    const [m] = await take(after[Symbol.asyncIterator](), 1);
    assert.equal(m.id, b.id);
    after.close();
  });

  await t.test('a cursor older than the history gets a gap marker first', async () => {
    const ch = p.channel('/gappy');
    const live = await open(ch);
    for (const s of ['1', '2', '3', '4', '5']) await ch.publish(s);
    const got = await take(live[Symbol.asyncIterator](), 5);
    live.close();
    const sub = ch.subscribe({ since: got[0].id }); // history holds 3 of the 4 after it
    const [gap, ...rest] = await take(sub[Symbol.asyncIterator](), 4);
    assert.deepEqual(gap, { id: '', data: '', binary: false, gap: true });
    assert.deepEqual(rest.map((m) => m.data), ['3', '4', '5']);
    sub.close();
  });

  await t.test('every subscriber gets every message, unicode paths included', async () => {
    const ch = p.channel('/ünï/cödé 1');
    const s1 = await open(ch);
    const s2 = await open(p.channel('/ünï/cödé 1'));
    await ch.publish('für alle');
    const [[m1], [m2]] = await Promise.all([take(s1[Symbol.asyncIterator](), 1), take(s2[Symbol.asyncIterator](), 1)]);
    assert.equal(m1.data, 'für alle');
    assert.equal(m2.id, m1.id);
    s1.close();
    s2.close();
  });

  await t.test('a path names its canonical form, which the server redirects the others to', async () => {
    for (const [given, want] of [['//news/today', '/news/today'], ['/x/../news/./today', '/news/today'], ['/a/', '/a/'], ['', '/'], ['a/..', '/']]) {
      assert.equal(p.channel(given).path, want, given);
    }
    const sub = await open(p.channel('/clean/path'));
    await p.channel('/x/../clean//path').publish('not lost to a redirect');
    const [m] = await take(sub[Symbol.asyncIterator](), 1);
    assert.equal(m.data, 'not lost to a redirect');
    sub.close();
  });

  await t.test('leaving the loop closes the subscription; so does its signal', async () => {
    const ch = p.channel('/leave');
    const sub = await open(ch);
    await ch.publish('x');
    for await (const m of sub) {
      assert.equal(m.data, 'x');
      break;
    }
    const ac = new AbortController();
    const sub2 = await open(ch, { signal: ac.signal });
    const [gotY, fire] = signal();
    const loop = (async () => {
      const seen = [];
      for await (const m of sub2) {
        seen.push(m.data);
        fire();
      }
      return seen;
    })();
    await ch.publish('y');
    await gotY;
    ac.abort(); // the loop ends with what it got
    assert.deepEqual(await loop, ['y']);
  });

  await t.test('a reader that falls behind loses nothing: the client pauses and resumes from the history', async () => {
    const ch = p.channel('/slow');
    let opens = 0;
    const [opened, fire] = signal();
    const sub = ch.subscribe({
      buffer: 2,
      onOpen: () => {
        opens++;
        fire();
      },
    });
    const it = sub[Symbol.asyncIterator]();
    await opened; // subscribed from 'now': a message published before would not come
    await ch.publish('0');
    await take(it, 1); // open, and reading
    for (const s of ['1', '2', '3']) await ch.publish(s); // history holds 3; the buffer 2
    const got = await take(it, 3);
    await ch.publish('4');
    got.push(...(await take(it, 1)));
    assert.deepEqual(got.map((m) => m.data), ['1', '2', '3', '4']);
    assert.equal(opens, 2, 'the full buffer dropped the connection, and the client resumed after the reader caught up');
    sub.close();
  });

  await t.test('bad input: typed errors from publish, and a subscription that cannot be made ends its loop with the error', async () => {
    const big = await p.channel('/big').publish('x'.repeat(70 << 10)).catch((e) => e);
    assert.ok(big instanceof TooLargeError, String(big));
    const long = await p.channel('/' + 'x'.repeat(300)).publish('x').catch((e) => e);
    assert.equal(long.status, 400);
    assert.match(long.message, /Path length must be 1-256/);

    const errors = [];
    const sub = p.channel('/' + 'y'.repeat(300)).subscribe({ onError: (e) => errors.push(e) });
    await assert.rejects(
      (async () => {
        for await (const m of sub) assert.fail(`unexpected ${m}`);
      })(),
      (e) => e instanceof PosternError && e.status === 400,
    );
    assert.deepEqual(errors, [], 'a 400 is not retried');

    assert.throws(() => p.channel('/x').subscribe({ transport: 'websocket' }).close(), TypeError);
  });
});

test('a subscription and a tunnel worker carry on across a server restart', async (t) => {
  const dir = await tempDir(t);
  const store = `file:${dir}`;
  let srv = await serve(t, { store });
  const port = srv.port;
  const p = new Postern(srv.url);
  const ch = p.channel('/restart');
  const jobs = p.tunnel('restart-jobs');

  let opens = 0;
  const openWaiters = [];
  const errors = [];
  const sub = ch.subscribe({
    reconnect: { minDelay: 20, maxDelay: 200 },
    onOpen: () => {
      opens++;
      openWaiters.splice(0).forEach((f) => f());
    },
    onError: (e) => errors.push(e),
  });
  const nextOpen = () => new Promise((r) => openWaiters.push(r));
  const it = sub[Symbol.asyncIterator]();
  await nextOpen();

  // A worker draining the tunnel with acknowledgements.
  const worked = [];
  const workerStop = new AbortController();
  const wakeWorker = [];
  // Whatever happens below, the loops end with the test: a failed assertion
  // must not leave a worker polling a stopped server and the process alive.
  t.after(() => {
    workerStop.abort();
    sub.close();
  });
  const worker = (async () => {
    const pw = new Postern(srv.url, { retry: { minDelay: 20, maxDelay: 200 } });
    for await (const m of pw.tunnel('restart-jobs').messages({ ack: true, wait: 30, signal: workerStop.signal })) {
      worked.push(m.text());
      wakeWorker.splice(0).forEach((f) => f());
    }
  })();
  const workerGot = (n) => (worked.length >= n ? Promise.resolve() : new Promise((r) => wakeWorker.push(() => worked.length >= n && r())).then(() => workerGot(n)));

  await ch.publish('before');
  const [before] = await take(it, 1);
  assert.equal(before.data, 'before');
  await jobs.send('job 1');
  await workerGot(1);

  const reopened = nextOpen();
  await srv.stop();
  await jobs.send('while down', { retry: false }).then(
    () => assert.fail('the server is down'),
    (e) => assert.equal(e.status, 0, 'no answer: status 0'),
  );
  srv = await serve(t, { store, port });
  await reopened;
  assert.equal(opens, 2);
  assert.ok(errors.length >= 1, 'the lost connection was reported');
  assert.ok(errors.every((e) => e instanceof PosternError));

  await ch.publish('after');
  const [next] = await take(it, 1);
  const got = next.gap ? (await take(it, 1))[0] : next;
  assert.equal(got.data, 'after', 'the message published after the reconnect arrives');
  assert.ok(got.id > before.id, 'ids keep growing across the restart');

  await jobs.send('job 2');
  await workerGot(2);
  assert.deepEqual(worked, ['job 1', 'job 2']);

  // The loop acknowledges a message when it asks for the next one, that is
  // after the body above saw it: stop the worker (its last ack done), then count.
  workerStop.abort();
  await worker;
  assert.equal(await jobs.len(), 0, 'both jobs were acknowledged');
  sub.close();
});
