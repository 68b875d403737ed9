import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Postern, PosternError, QueueFullError, TooLargeError, newIdempotencyKey } from '../dist/index.js';
import { serve } from './postern.js';

test('inbox against postern serve', async (t) => {
  const srv = await serve(t, { args: ['--inbox-max-receive', '2', '--inbox-max-len', '3', '--inbox-max-body', '4096'] });
  const p = new Postern(srv.url);

  await t.test("the seed's three-party exchange: messages and acks in arrival order", async () => {
    const key = newIdempotencyKey();
    assert.match(key, /^[A-Za-z0-9_-]{43}$/);
    const before = Date.now() - 1000;
    assert.equal(await p.inbox('olivia').send({ to: ['maurice', 'george'], body: 'Hey there, are you ok?', expectsAck: true, idempotencyKey: key }), 2);

    const maurice = await p.inbox('maurice').exchange({ to: ['olivia', 'george'], body: { message: 'Yep fine' }, idempotencyKey: '111111111111' });
    assert.equal(maurice.length, 1);
    assert.equal(maurice.remaining, 0);
    const [m] = maurice;
    assert.equal(m.type, 'msg');
    assert.equal(m.origin, 'olivia');
    assert.equal(m.body, 'Hey there, are you ok?');
    assert.equal(m.expectsAck, true);
    assert.equal(m.idempotencyKey, key);
    assert.ok(m.sentAt instanceof Date && m.sentAt.getTime() >= before - 1000);

    const george = await p.inbox('george').receive();
    assert.deepEqual(george.map((e) => [e.type, e.origin]), [['msg', 'olivia'], ['msg', 'maurice']]);
    assert.deepEqual(george[1].body, { message: 'Yep fine' });
    assert.equal(george[1].expectsAck, false);
    assert.deepEqual([...(await p.inbox('george').receive())], [], 'a second receive is empty');

    // The server returns at most 2 entries a receive here (--inbox-max-receive).
    const olivia = await p.inbox('olivia').receive();
    assert.equal(olivia.remaining, 1);
    olivia.push(...(await p.inbox('olivia').receive()));
    const show = (e) => (e.type === 'ack' ? `ack ${e.destination}` : `msg ${e.origin}`);
    assert.deepEqual(olivia.map(show), ['msg maurice', 'ack maurice', 'ack george']);
    assert.ok(olivia[1].receivedAt instanceof Date);
    assert.equal(olivia[1].idempotencyKey, key);
  });

  await t.test('a send repeated with its key is delivered once', async () => {
    const env = { to: 'ida', body: 42, idempotencyKey: newIdempotencyKey() };
    await p.inbox('sam').send(env);
    await p.inbox('sam').send(env);
    const got = await p.inbox('ida').receive();
    assert.equal(got.length, 1);
    assert.equal(got[0].body, 42);
    await p.inbox('sam').send(env); // after it was read: still not again
    assert.equal((await p.inbox('ida').receive()).length, 0);
  });

  await t.test('without a key each send gets a new random one', async () => {
    await p.inbox('kim').send({ to: 'lee', body: null });
    await p.inbox('kim').send({ to: 'lee' });
    const got = await p.inbox('lee').receive();
    assert.equal(got.length, 2);
    assert.notEqual(got[0].idempotencyKey, got[1].idempotencyKey);
    assert.equal(got[1].body, null);
  });

  await t.test('remaining says that a receive hit the server cap', async () => {
    for (let i = 0; i < 3; i++) await p.inbox('a').send({ to: 'capped', body: i });
    const first = await p.inbox('capped').receive();
    assert.deepEqual(first.map((e) => e.body), [0, 1]);
    assert.equal(first.remaining, 1);
    const rest = await p.inbox('capped').receive();
    assert.deepEqual(rest.map((e) => e.body), [2]);
    assert.equal(rest.remaining, 0);
  });

  await t.test('bad input: the server details, QueueFullError, TooLargeError', async () => {
    const bad = await p.inbox('x').send({ to: 'y', idempotencyKey: 'short' }).catch((e) => e);
    assert.ok(bad instanceof PosternError);
    assert.equal(bad.status, 400);
    assert.ok(bad.details.some((d) => /idempotency key/i.test(d)), bad.details.join('; '));
    assert.match(bad.message, /^postern: 400 Bad request: /);

    const noFrom = await p.inbox('').receive().catch((e) => e);
    assert.equal(noFrom.status, 400);

    for (let i = 0; i < 3; i++) await p.inbox('filler').send({ to: 'stuffed', body: i });
    const full = await p.inbox('filler').send({ to: ['stuffed', 'roomy'], body: 'more' }).catch((e) => e);
    assert.ok(full instanceof QueueFullError, String(full));
    assert.equal(full.status, 507);
    assert.match(full.details.join(), /stuffed/);
    assert.equal((await p.inbox('roomy').receive()).length, 1, 'the other destination got its copy');

    const big = await p.inbox('x').send({ to: 'y', body: 'z'.repeat(5000) }).catch((e) => e);
    assert.ok(big instanceof TooLargeError, String(big));
  });
});
