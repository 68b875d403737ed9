import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ForbiddenError, NotPendingError, Postern, PosternError, QueueFullError, TooLargeError } from '../dist/index.js';
import { serve } from './postern.js';

/** Resolves once the server at url has no long-poll waiting (its /metrics gauge). */
async function noWaiters(url) {
  for (;;) {
    const text = await (await fetch(`${url}/metrics`)).text();
    if (!text.includes('postern_queue_waiters')) throw new Error('no postern_queue_waiters in /metrics');
    if (!/^postern_queue_waiters\{[^}]*\} [1-9]/m.test(text)) return;
  }
}

test('tunnels against postern serve', async (t) => {
  const srv = await serve(t, { args: ['--tunnel-max-body', '1024', '--tunnel-max-poll-timeout', '60s'] });
  const p = new Postern(srv.url);

  await t.test('send then receive: text, JSON and bytes with their content types', async () => {
    const jobs = p.tunnel('jobs');
    const { id, queueSize, trimmed } = await jobs.send('job 1', { contentType: 'text/plain' });
    assert.match(id, /^\d+-\d+$/);
    assert.equal(trimmed, 0);
    assert.equal(typeof queueSize, 'number');
    await jobs.send({ n: 1, s: 'ü' });
    await jobs.send(new Uint8Array([0, 1, 2, 255]), { contentType: 'application/octet-stream' });

    const m1 = await jobs.receive();
    assert.equal(m1.id, id);
    assert.equal(m1.text(), 'job 1');
    assert.equal(m1.contentType, 'text/plain');
    const m2 = await jobs.receive();
    assert.deepEqual(m2.json(), { n: 1, s: 'ü' });
    assert.equal(m2.contentType, 'application/json');
    const m3 = await jobs.receive();
    assert.deepEqual([...m3.bytes()], [0, 1, 2, 255]);
    assert.equal(await jobs.receive(), null, 'an empty tunnel answers null at once');
  });

  await t.test('one idempotency key stores one message, however often it is sent', async () => {
    const tun = p.tunnel('idem');
    const first = await tun.send('charge 10', { idempotencyKey: 'order-42' });
    assert.equal(first.replayed, false);
    const again = await tun.send('charge 10', { idempotencyKey: 'order-42' });
    assert.equal(again.replayed, true, 'the second send is answered as a replay');
    assert.equal(again.id, first.id, 'and names the message the first one stored');
    const other = await tun.send('charge 11');
    assert.equal(other.replayed, false, 'a send without a key of its own gets a fresh one');
    assert.equal(await tun.len(), 2);
    assert.equal((await tun.receive()).text(), 'charge 10');
    assert.equal((await tun.receive()).text(), 'charge 11');
    assert.equal(await tun.receive(), null);
  });

  await t.test('a long-poll receive is woken by a send', async () => {
    const tun = p.tunnel('wake');
    const waiting = tun.receive({ wait: 30 });
    await tun.send('late');
    assert.equal((await waiting).text(), 'late');
  });

  await t.test('pending messages come again until acknowledged', async () => {
    const tun = p.tunnel('pend');
    const { id } = await tun.send('work');
    const a = await tun.receive({ pending: true });
    const b = await tun.receive({ pending: true });
    assert.equal(a.id, id);
    assert.equal(b.id, id, 'a pending message is handed out again');
    assert.equal(await tun.status(id), 'pending');
    assert.equal(await tun.len(), 1);
    await a.ack();
    assert.equal(a.acked, true);
    assert.equal(await tun.status(id), 'gone');
    assert.equal(await tun.len(), 0);
    await tun.ack(id); // acknowledging again is harmless
  });

  await t.test('status, len and clear', async () => {
    const tun = p.tunnel('misc');
    const { id } = await tun.send('x');
    await tun.send('y');
    assert.equal(await tun.status(id), 'queued');
    assert.equal(await tun.len(), 2);
    await tun.clear();
    assert.equal(await tun.len(), 0);
    assert.equal(await tun.status(id), 'gone');
  });

  await t.test('request and reply', async () => {
    const rpc = p.tunnel('rpc');
    const worker = (async () => {
      const msg = await rpc.receive({ pending: true, wait: 30 });
      assert.equal(msg.text(), 'ping');
      await msg.reply('pong', { contentType: 'text/plain' });
      assert.equal(msg.acked, true);
      await assert.rejects(msg.reply('again'), (e) => e instanceof NotPendingError && e.status === 204);
    })();
    const reply = await rpc.request('ping', { wait: 10 });
    await worker;
    assert.equal(reply.text(), 'pong');
    assert.equal(reply.contentType, 'text/plain');
    assert.equal(reply.id, undefined, 'a reply has no message id');
  });

  await t.test('readReply answers null when no reply came', async () => {
    const tun = p.tunnel('noreply');
    const { id } = await tun.send('q');
    assert.equal(await tun.readReply(id), null);
  });

  await t.test('messages({ack: true}) acknowledges each message when the loop asks for the next', async () => {
    const tun = p.tunnel('drain');
    const ids = [];
    for (const s of ['a', 'b', 'c']) ids.push((await tun.send(s)).id);
    const seen = [];
    for await (const m of tun.messages({ ack: true, wait: 5 })) {
      seen.push(m.text());
      if (seen.length === 3) break; // leaves c unacknowledged
    }
    assert.deepEqual(seen, ['a', 'b', 'c']);
    assert.equal(await tun.status(ids[0]), 'gone');
    assert.equal(await tun.status(ids[1]), 'gone');
    assert.equal(await tun.status(ids[2]), 'pending', 'a message whose loop body did not finish stays pending');
    for await (const m of tun.messages({ ack: true, wait: 5 })) {
      assert.equal(m.id, ids[2], 'the unfinished message comes again');
      await m.ack(); // acknowledged by hand: the loop does not ack it twice
      break;
    }
    assert.equal(await tun.len(), 0);
  });

  await t.test('messages() ends when its signal aborts', async () => {
    const ac = new AbortController();
    const tun = p.tunnel('stop');
    const got = [];
    const loop = (async () => {
      for await (const m of tun.messages({ signal: ac.signal, wait: 30 })) {
        got.push(m.text());
        ac.abort();
      }
    })();
    await tun.send('only');
    await loop; // ends without throwing
    assert.deepEqual(got, ['only']);
  });

  await t.test('an aborted long-poll rejects with the signal reason and takes nothing', async () => {
    const tun = p.tunnel('abort');
    const ac = new AbortController();
    const waiting = tun.receive({ wait: 30, signal: ac.signal });
    ac.abort();
    await assert.rejects(waiting, { name: 'AbortError' });
    // The server learns of the abort when the connection closes: until it
    // has, a message sent now could be written to that dead connection and
    // count as delivered (HTTP cannot tell). Wait for its long-poll to end.
    await noWaiters(srv.url);
    const reason = new Error('mine');
    const ac2 = new AbortController();
    ac2.abort(reason);
    await assert.rejects(tun.send('x', { signal: ac2.signal }), (e) => e === reason);
    await tun.send('after');
    assert.equal((await tun.receive()).text(), 'after');
  });

  await t.test('a full tunnel refuses with QueueFullError', async () => {
    const tun = p.tunnel('full');
    await tun.send('1', { limit: 1 });
    const e = await tun.send('2', { limit: 1 }).catch((e) => e);
    assert.ok(e instanceof QueueFullError, String(e));
    assert.ok(e instanceof PosternError);
    assert.equal(e.status, 507);
    assert.equal(e.queueSize, 1);
    assert.equal(e.name, 'QueueFullError');
    const r = await tun.send('3', { noBackpressure: true });
    assert.match(r.id, /^\d+-\d+$/);
    assert.equal(r.queueSize, -1, 'no queue size without backpressure');
  });

  await t.test('bad input gets typed errors with the server message', async () => {
    const bad = await p.tunnel('not a valid id!').send('x').catch((e) => e);
    assert.ok(bad instanceof PosternError);
    assert.equal(bad.status, 400);
    assert.match(bad.message, /^postern: 400 Malformed url$/);

    const big = await p.tunnel('big').send('x'.repeat(2000)).catch((e) => e);
    assert.ok(big instanceof TooLargeError, String(big));
    assert.equal(big.status, 413);

    const neg = await p.tunnel('neg').send('x', { limit: -1 }).catch((e) => e);
    assert.equal(neg.status, 400);
    assert.match(neg.message, /Limit must not be negative/);

    await assert.rejects(p.tunnel('x').ack('not-an-id'), { status: 400 });
  });

  await t.test('the URL must be http or https', () => {
    assert.throws(() => new Postern('ftp://127.0.0.1'), TypeError);
    assert.throws(() => new Postern('not a url'), TypeError);
  });
});

test('tunnels with an access token', async (t) => {
  const srv = await serve(t, { env: { TUNNEL_ACCESS_TOKEN: 'sesame' } });
  const anon = new Postern(srv.url);
  const e = await anon.tunnel('locked').send('x').catch((e) => e);
  assert.ok(e instanceof ForbiddenError, String(e));
  assert.equal(e.status, 403);
  assert.equal(e.message, 'postern: 403 Access denied');

  const p = new Postern(srv.url, { token: 'sesame' });
  await p.tunnel('locked').send('x');
  assert.equal((await p.tunnel('locked').receive()).text(), 'x');
});
