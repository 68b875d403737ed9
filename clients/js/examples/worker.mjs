// A worker that drains a tunnel: every message is handled, then
// acknowledged; a message whose handling failed stays pending and comes
// again. Messages that carry a question get a reply (see request() below).
//
//   node examples/worker.mjs http://127.0.0.1:8080 jobs
//   # elsewhere: postern send jobs 'job 1'
//   #       or: await new Postern(url).tunnel('jobs').request('ping', { wait: 10 })
//
// It waits out a restarting server and stops cleanly on Ctrl-C.
import { Postern } from '@postern/client';

const [url = 'http://127.0.0.1:8080', tunnel = 'jobs'] = process.argv.slice(2);
const p = new Postern(url, { token: process.env.POSTERN_TOKEN });
const stop = new AbortController();
process.once('SIGINT', () => stop.abort());
process.once('SIGTERM', () => stop.abort());

console.log(`draining ${tunnel} on ${p.url}`);
for await (const m of p.tunnel(tunnel).messages({ ack: true, signal: stop.signal })) {
  const body = m.text();
  console.log(`${m.id} ${m.contentType}: ${body}`);
  if (body === 'ping') await m.reply('pong'); // a reply acknowledges too
}
console.log('stopped');
