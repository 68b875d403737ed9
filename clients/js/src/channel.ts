import { CallOptions, Core, backoff, errorOf, sleep, utf8 } from './core.js';
import { PosternError } from './errors.js';

/**
 * One message of a channel: text, binary (published as a binary websocket
 * message), or a gap marker saying that messages after the cursor were
 * missed (the server's history no longer held them).
 */
export type ChannelMessage =
  | { id: string; data: string; binary: false; gap: false }
  | { id: string; data: Uint8Array; binary: true; gap: false }
  | { id: ''; data: ''; binary: false; gap: true };

/** Options of Channel.subscribe. */
export interface SubscribeOptions {
  /**
   * Where to start: 'now' (the default) with the next message, '0' with
   * the history the server keeps, or after a message id. After a
   * reconnect the subscription resumes after the last message it got.
   */
  since?: string;
  /** Closes the subscription; the loop over it then ends. */
  signal?: AbortSignal;
  /** 'auto' (the default): WebSocket where present, else Server-Sent Events over fetch. */
  transport?: 'auto' | 'websocket' | 'sse';
  /**
   * Messages held for a reader that falls behind (default 1000). When
   * full, the client disconnects and resumes from the server's history
   * once the reader has caught up, instead of growing.
   */
  buffer?: number;
  /** Reconnect backoff in milliseconds (default 250 doubling to 15000, jittered). */
  reconnect?: { minDelay?: number; maxDelay?: number };
  /**
   * Milliseconds between keep-alives (default 25000): a connection that
   * hears nothing for two of them is dropped and made again. Event streams
   * hear the server's keep-alive comment every 27 s: keep
   * two of these above that.
   */
  keepAlive?: number;
  /** Called each time a connection is open: messages published from now on arrive. */
  onOpen?: () => void;
  /** Called when a connection fails or ends, before the next try. */
  onError?: (e: PosternError) => void;
}

type WSClass = typeof WebSocket;

/** One pub/sub channel of the server, named by a path ("/news"). */
export class Channel {
  /**
   * The channel's name, in canonical form: "//a" and "/x/../a" name "/a";
   * a leading '/' is added when missing, a trailing one is kept.
   */
  readonly path: string;
  private readonly c: Core;
  private readonly at: string;
  private readonly ws?: WSClass | null;

  constructor(c: Core, path: string, prefix: string, ws?: WSClass | null) {
    this.c = c;
    this.path = clean(path);
    this.at = prefix + this.path.split('/').map(encodeURIComponent).join('/');
    this.ws = ws === undefined ? (globalThis as { WebSocket?: WSClass }).WebSocket : ws;
  }

  /**
   * Sends text to every subscriber of the channel. An empty message reaches
   * nobody. Not retried when the outcome is unknown (it would be
   * delivered twice).
   */
  async publish(data: string | Uint8Array, o?: CallOptions): Promise<void> {
    const body = typeof data == 'string' ? utf8(data) : data;
    await this.c.call({ method: 'POST', path: this.at, body, headers: { 'Content-Type': 'text/plain; charset=utf-8' } }, [200], o);
  }

  /** Subscribes to the channel: iterate over the result with for await. */
  subscribe(o: SubscribeOptions = {}): Subscription {
    const ws = o.transport == 'sse' ? null : this.ws;
    if (o.transport == 'websocket' && !ws) throw new TypeError('postern: no WebSocket here: pass one as the WebSocket option');
    return new Subscription(this.c, this.at, o, ws ?? undefined);
  }
}

/**
 * The canonical form of a channel path, as the server computes it (Go's
 * path.Clean, a trailing slash kept): the server redirects the other
 * forms there, and a redirected POST would be followed as a GET.
 */
function clean(p: string): string {
  const out: string[] = [];
  for (const s of p.split('/')) {
    if (s == '..') out.pop();
    else if (s && s != '.') out.push(s);
  }
  const c = '/' + out.join('/');
  return c != '/' && p.endsWith('/') ? c + '/' : c;
}

const GAP: ChannelMessage = { id: '', data: '', binary: false, gap: true };

function decode64(s: string): Uint8Array {
  return Uint8Array.from(atob(s), (ch) => ch.charCodeAt(0));
}

/**
 * A live subscription to a channel. It reconnects by itself with jittered
 * backoff and resumes after the last message received. Iterate over it
 * with for await; leaving the loop, close() and the signal end it. The
 * loop throws only for an answer that no retry can change (403, 400).
 */
export class Subscription implements AsyncIterable<ChannelMessage> {
  private q: ChannelMessage[] = [];
  private wake?: () => void; // the reader's, waiting for a message
  private resume?: () => void; // the connector's, paused
  private err?: unknown;
  private ended = false;
  private paused = false;
  private last: string;
  private conn?: AbortController;
  private readonly ac = new AbortController();

  constructor(
    private readonly c: Core,
    private readonly at: string,
    private readonly o: SubscribeOptions,
    private readonly WS?: WSClass,
  ) {
    this.last = o.since || 'now';
    o.signal?.addEventListener('abort', () => this.close(), { once: true });
    if (o.signal?.aborted) this.close();
    this.run();
  }

  /** The id of the last message received: where a reconnect resumes. */
  get lastId(): string {
    return /^\d/.test(this.last) && this.last != '0' ? this.last : '';
  }

  /** Ends the subscription; a loop over it ends once it has taken what was received. */
  close(): void {
    this.ac.abort();
    this.resume?.();
    this.kick();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<ChannelMessage, void, undefined> {
    try {
      for (;;) {
        const m = this.q.shift();
        if (m) {
          if (this.paused && this.q.length < (this.o.buffer ?? 1000) / 2) {
            this.paused = false;
            this.resume?.();
          }
          yield m;
        } else if (this.err) throw this.err;
        else if (this.ended) return;
        else await new Promise<void>((r) => (this.wake = r));
      }
    } finally {
      this.close();
    }
  }

  private kick() {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private push(m: ChannelMessage) {
    if (m.id) this.last = m.id;
    this.q.push(m);
    this.kick();
    if (this.q.length >= (this.o.buffer ?? 1000)) {
      // The reader is behind: stop taking messages until it catches up,
      // then resume from the history.
      this.paused = true;
      this.conn?.abort();
    }
  }

  private async run() {
    const rules = { minDelay: 250, maxDelay: 15000, attempts: 0, ...this.o.reconnect };
    const stop = this.ac.signal;
    for (let n = 0; !stop.aborted; ) {
      if (this.paused) {
        await new Promise<void>((r) => (this.resume = r));
        continue;
      }
      const conn = (this.conn = new AbortController());
      const cut = () => conn.abort();
      stop.addEventListener('abort', cut);
      const opened = () => {
        n = 0;
        this.o.onOpen?.();
      };
      let e: unknown;
      try {
        await (this.WS ? this.viaWebSocket(conn, opened) : this.viaEvents(conn, opened));
      } catch (x) {
        e = x;
      }
      stop.removeEventListener('abort', cut);
      if (stop.aborted) break;
      if (this.paused) continue;
      if (e instanceof PosternError && e.status >= 400 && e.status < 500 && e.status != 408 && e.status != 429) {
        this.err = e;
        break;
      }
      this.o.onError?.(e instanceof PosternError ? e : new PosternError(0, String((e as Error)?.message ?? e), [], undefined, e));
      await sleep(backoff(n++, rules), stop).catch(() => {});
    }
    this.ended = true;
    this.kick();
  }

  private url(query: Record<string, string>): string {
    return this.c.url(this.at, { since: this.last, ...query });
  }

  private get keepAlive(): number {
    return this.o.keepAlive ?? 25000;
  }

  /** One websocket connection; settles when it ends. */
  private viaWebSocket(conn: AbortController, opened: () => void): Promise<void> {
    return new Promise((resolve, reject) => {
      // A browser cannot set headers on a websocket: the token goes in the query.
      const ws = new this.WS!(this.url(this.c.token ? { access_token: this.c.token } : {}).replace(/^http/, 'ws'));
      let seen = Date.now();
      let timer: ReturnType<typeof setInterval> | undefined;
      let open = false;
      const end = (why?: string) => {
        clearInterval(timer);
        conn.signal.removeEventListener('abort', abort);
        ws.onclose = ws.onmessage = ws.onerror = null;
        if (ws.readyState < 2) ws.close();
        if (conn.signal.aborted) resolve();
        else reject(new PosternError(0, why!));
      };
      const abort = () => end();
      conn.signal.addEventListener('abort', abort);
      ws.onopen = () => {
        open = true;
        opened();
        timer = setInterval(() => {
          // pinghub's keep-alive: an empty message, answered by an empty one.
          if (Date.now() - seen > 2 * this.keepAlive) end('no answer to keep-alives');
          else ws.send('');
        }, this.keepAlive);
      };
      ws.onmessage = (ev: MessageEvent) => {
        seen = Date.now();
        if (typeof ev.data != 'string' || !ev.data) return;
        const f = JSON.parse(ev.data);
        this.push(f.gap ? GAP : f.binary ? { id: f.id ?? '', data: decode64(f.data), binary: true, gap: false } : { id: f.id ?? '', data: f.data, binary: false, gap: false });
      };
      // A failed handshake fires error then close in browsers; Node 20's
      // experimental WebSocket fires only error.
      ws.onerror = () => open || end('websocket connection failed');
      ws.onclose = (ev: CloseEvent) =>
        end(open ? `connection closed (${ev.code}${ev.reason ? ' ' + ev.reason : ''})` : 'websocket connection failed');
    });
  }

  /** One event stream over fetch; settles when it ends. */
  private async viaEvents(conn: AbortController, opened: () => void): Promise<void> {
    let why = 'event stream ended';
    let seen = Date.now();
    let idle = false;
    const timer = setInterval(() => {
      if (Date.now() - seen > 2 * this.keepAlive) {
        idle = true;
        why = 'no keep-alive from the server';
        conn.abort();
      }
    }, this.keepAlive);
    try {
      const resp = await this.c.fetch(this.url({}), { headers: this.c.auth({ Accept: 'text/event-stream' }), signal: conn.signal });
      if (resp.status != 200) throw errorOf({ status: resp.status, headers: resp.headers, data: new Uint8Array(await resp.arrayBuffer()) });
      opened();
      const reader = resp.body!.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      let ev = { event: '', id: '', data: [] as string[] };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        seen = Date.now();
        const lines = (buf + value).split('\n');
        buf = lines.pop()!;
        for (let line of lines) {
          line = line.replace(/\r$/, '');
          if (line) {
            if (line[0] == ':') continue;
            const i = line.indexOf(':');
            const k = i < 0 ? line : line.slice(0, i);
            const v = i < 0 ? '' : line.slice(i + (line[i + 1] == ' ' ? 2 : 1));
            if (k == 'data') ev.data.push(v);
            else if (k == 'event' || k == 'id') ev[k] = v;
            continue;
          }
          // A blank line dispatches the event.
          const d = ev.data.join('\n');
          if (ev.event == 'gap') this.push(GAP);
          else if (ev.event == 'end') why = 'server ended the stream: ' + d;
          else if (ev.event == 'binary') this.push({ id: ev.id, data: decode64(d), binary: true, gap: false });
          else if (ev.data.length) this.push({ id: ev.id, data: d, binary: false, gap: false });
          ev = { event: '', id: '', data: [] };
        }
      }
    } catch (e) {
      if (e instanceof PosternError) throw e;
      if (conn.signal.aborted && !idle) return; // closed, or paused
      throw new PosternError(0, idle ? why : `event stream ${this.at}: ${(e as Error)?.message ?? e}`, [], undefined, e);
    } finally {
      clearInterval(timer);
    }
    if (!conn.signal.aborted) throw new PosternError(0, why);
  }
}
