// Every call of @postern/client's tour, run in order against a server:
//
//   node examples/tour.mjs http://127.0.0.1:8080
//
// Plain Node 20 runs it without flags (channels then use Server-Sent
// Events; with a WebSocket, websockets).
import { Postern, newIdempotencyKey } from '@postern/client';

const p = new Postern(process.argv[2] ?? 'http://127.0.0.1:8080', { token: process.env.POSTERN_TOKEN });

// channels: an async iterable that reconnects and resumes by itself
let opened;
const open = new Promise((r) => (opened = r));
const sub = p.channel('/news').subscribe({ since: 'now', onOpen: opened });
await open; // from here on, every message published arrives
await p.channel('/news').publish('hello');
for await (const m of sub) {
  console.log(`channel ${m.id} ${m.data} gap=${m.gap}`);
  break; // leaving the loop closes the subscription
}
sub.close();

// tunnels
const { id } = await p.tunnel('jobs').send('job 1', { contentType: 'text/plain' });
const msg = await p.tunnel('jobs').receive({ pending: true, wait: 30 });
console.log(`tunnel ${msg.id === id} ${msg.text()} ${msg.contentType}`);
await msg.ack();

const worker = (async () => {
  const q = await p.tunnel('rpc').receive({ pending: true, wait: 30 });
  await q.reply(`${q.text()} -> pong`);
})();
const reply = await p.tunnel('rpc').request('ping', { wait: 10 });
await worker;
console.log(`reply ${reply.text()}`);

await p.tunnel('jobs').send({ n: 1 });
await p.tunnel('jobs').send({ n: 2 });
for await (const m of p.tunnel('jobs').messages({ ack: true })) {
  console.log(`job ${m.json().n}`); // acknowledged when the loop asks for the next
  if (m.json().n === 2) {
    await m.ack(); // leaving the loop would leave it pending: ack it by hand
    break;
  }
}

// inbox (echoes)
const idempotencyKey = newIdempotencyKey();
await p.inbox('olivia').send({ to: ['maurice', 'george'], body: { hi: 1 }, expectsAck: true, idempotencyKey });
const entries = await p.inbox('george').receive(); // messages and acks, in arrival order
for (const e of entries) console.log(`inbox ${e.type} from ${e.origin} ${JSON.stringify(e.body)}`);
const acks = await p.inbox('olivia').receive();
for (const e of acks) console.log(`inbox ${e.type} by ${e.destination}`);
