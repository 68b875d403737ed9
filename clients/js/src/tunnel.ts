import { Body, CallOptions, Core, Res, backoff, encodeBody, newIdempotencyKey, retriable, sleep, text } from './core.js';
import { NotPendingError, PosternError } from './errors.js';

/** A message body received: a tunnel message or a reply. */
export class Payload {
  /** The content type it was sent with (or the server's default). */
  readonly contentType: string;
  protected readonly data: Uint8Array;

  constructor(contentType: string, data: Uint8Array) {
    this.contentType = contentType;
    this.data = data;
  }

  /** The body as bytes. */
  bytes(): Uint8Array {
    return this.data;
  }

  /** The body as UTF-8 text. */
  text(): string {
    return text(this.data);
  }

  /** The body parsed as JSON. */
  json<T = unknown>(): T {
    return JSON.parse(this.text());
  }
}

/** A message received from a tunnel. */
export class TunnelMessage extends Payload {
  /** The message id ("<ms>-<seq>"). */
  readonly id: string;
  /** Set once ack or reply succeeded. */
  acked = false;
  private readonly t: Tunnel;

  constructor(t: Tunnel, id: string, contentType: string, data: Uint8Array) {
    super(contentType, data);
    this.t = t;
    this.id = id;
  }

  /** Acknowledges (deletes) the message: Tunnel.ack. */
  async ack(o?: CallOptions): Promise<void> {
    await this.t.ack(this.id, o);
    this.acked = true;
  }

  /** Acknowledges the message with a reply for its producer: Tunnel.reply. */
  async reply(body: Body, o?: ReplyOptions): Promise<void> {
    await this.t.reply(this.id, body, o);
    this.acked = true;
  }
}

/** Options of Tunnel.send. */
export interface SendOptions extends CallOptions {
  /** Stored with the message and served to the consumer; default: the server's. */
  contentType?: string;
  /** Refuse the message (QueueFullError) when the tunnel already holds this many. */
  limit?: number;
  /** Accept the message even when the tunnel is full, trimming the oldest. */
  noBackpressure?: boolean;
  /**
   * Sent as `Idempotency-Key`, the same on every retry of this send, so a
   * server that honours it stores the message once. Default: a new random
   * key per send. `false`: none, and the send is then not retried when its
   * outcome is unknown.
   */
  idempotencyKey?: string | false;
}

/** What the server said about a sent message. */
export interface SendResult {
  id: string;
  /** The tunnel's length after the send, when backpressure is on; -1 otherwise. */
  queueSize: number;
  /** Older messages dropped to make room (backpressure off). */
  trimmed: number;
  /**
   * True when the server had already stored a message under this send's
   * idempotency key (a retry, or the same key sent twice): nothing new was
   * queued and id is the first message's.
   */
  replayed: boolean;
}

/** Options of Tunnel.receive. */
export interface ReceiveOptions extends CallOptions {
  /** Keep the message until it is acknowledged; until then every pending receive returns it again. */
  pending?: boolean;
  /** Seconds to long-poll for a message (the server clamps it to its maximum); 0: answer at once. */
  wait?: number;
}

/** Options of replies. */
export interface ReplyOptions extends CallOptions {
  contentType?: string;
}

/** Options of Tunnel.messages. */
export interface MessagesOptions {
  /**
   * Receive in pending mode and acknowledge each message when the loop asks
   * for the next one; a message whose loop body did not finish (break,
   * return, throw) stays pending and comes again.
   */
  ack?: boolean;
  /** Seconds of each long-poll (default 30). */
  wait?: number;
  /** Ends the loop. */
  signal?: AbortSignal;
}

/** Where a message is. */
export type Status = 'queued' | 'pending' | 'gone';

/**
 * One tunnel of the server: a queue of messages from producers to
 * consumers, with optional replies.
 */
export class Tunnel {
  /** The tunnel's name (1 to 1024 of A-Z a-z 0-9 - _). */
  readonly id: string;
  private readonly c: Core;

  constructor(c: Core, id: string) {
    this.c = c;
    this.id = id;
  }

  private path(...parts: string[]): string {
    return '/t/' + [this.id, ...parts].map(encodeURIComponent).join('/');
  }

  /** Produces a message. */
  async send(body: Body, o: SendOptions = {}): Promise<SendResult> {
    const [b, ct] = encodeBody(body, o.contentType);
    const headers: Record<string, string> = {};
    if (ct) headers['Content-Type'] = ct;
    const key = o.idempotencyKey ?? newIdempotencyKey();
    if (key) headers['Idempotency-Key'] = key;
    const query: Record<string, string> = {};
    if (o.noBackpressure) query.limit = '0';
    else if (o.limit) query.limit = '' + o.limit;
    const res = await this.c.call({ method: 'POST', path: this.path(), query, body: b, headers, idem: !!key }, [201], o);
    const h = res.headers;
    return { id: h.get('X-Message-Id') ?? '', queueSize: +(h.get('X-Queue-Size') ?? -1), trimmed: +(h.get('X-Queue-Trimmed') ?? 0), replayed: h.get('Idempotent-Replayed') == 'true' };
  }

  /** Consumes the oldest message; null when there was none (within wait). */
  async receive(o: ReceiveOptions = {}): Promise<TunnelMessage | null> {
    const query: Record<string, string> = {};
    if (o.pending) query.pending = '';
    if (o.wait) query.timeout = '' + Math.ceil(o.wait);
    const res = await this.c.call({ method: 'GET', path: this.path(...(o.wait ? ['poll'] : [])), query, idem: true }, [200, 204], o);
    return res.status == 204 ? null : new TunnelMessage(this, res.headers.get('X-Message-Id') ?? '', ct(res), res.data);
  }

  /** Acknowledges (deletes) message id. */
  async ack(id: string, o?: CallOptions): Promise<void> {
    await this.c.call({ method: 'DELETE', path: this.path(id), idem: true }, [204], o);
  }

  /**
   * Acknowledges pending message id and leaves body for its producer.
   * Rejects with NotPendingError when the message is not pending.
   */
  async reply(id: string, body: Body, o: ReplyOptions = {}): Promise<void> {
    const [b, type] = encodeBody(body, o.contentType);
    const res = await this.c.call(
      { method: 'POST', path: this.path(id, 'reply'), body: b, headers: type ? { 'Content-Type': type } : {} },
      [201, 204],
      o,
    );
    if (res.status == 204) throw new NotPendingError(204, `message ${id} is not pending`);
  }

  /** Takes the reply to message id, waiting up to wait seconds; null when none came. */
  async readReply(id: string, o: { wait?: number } & CallOptions = {}): Promise<Payload | null> {
    const p = o.wait ? this.path(id, 'reply', 'poll') : this.path(id, 'reply');
    const query: Record<string, string> = o.wait ? { timeout: '' + Math.ceil(o.wait) } : {};
    const res = await this.c.call({ method: 'GET', path: p, query, idem: true }, [200, 204], o);
    return res.status == 204 ? null : new Payload(ct(res), res.data);
  }

  /**
   * Sends body and waits up to wait seconds (default 30) for its reply;
   * null when none came.
   */
  async request(body: Body, o: SendOptions & { wait?: number } = {}): Promise<Payload | null> {
    const { id } = await this.send(body, o);
    return this.readReply(id, { wait: 30, ...o });
  }

  /** Reports where message id is. */
  async status(id: string, o?: CallOptions): Promise<Status> {
    const res = await this.c.call({ method: 'GET', path: this.path(id), idem: true }, [201, 202, 204], o);
    return res.status == 201 ? 'queued' : res.status == 202 ? 'pending' : 'gone';
  }

  /** The number of queued plus pending messages. */
  async len(o?: CallOptions): Promise<number> {
    const res = await this.c.call({ method: 'GET', path: this.path('len'), idem: true }, [204], o);
    return +(res.headers.get('X-Queue-Size') ?? 0);
  }

  /** Deletes every message of the tunnel; replies are kept. */
  async clear(o?: CallOptions): Promise<void> {
    await this.c.call({ method: 'DELETE', path: this.path('all'), idem: true }, [204], o);
  }

  /**
   * Yields the tunnel's messages as they come, long-polling, until the
   * signal aborts (the loop then ends) or an error that a retry cannot
   * cure (it is thrown). Lost connections and a restarting server are
   * waited out with backoff.
   */
  async *messages(o: MessagesOptions = {}): AsyncGenerator<TunnelMessage, void, undefined> {
    const { signal, ack } = o;
    const rules = this.c.rules();
    for (let fails = 0; !signal?.aborted; ) {
      let m: TunnelMessage | null;
      try {
        m = await this.receive({ pending: ack, wait: o.wait ?? 30, signal, retry: false });
        fails = 0;
      } catch (e) {
        if (signal?.aborted) return;
        if (!retriable(e, true)) throw e;
        const after = (e as PosternError).retryAfter;
        await sleep(after !== undefined ? after * 1000 : backoff(fails++, rules), signal).catch(() => {});
        continue;
      }
      if (!m) continue;
      yield m;
      // The body finished: the message was handled, whatever the signal says.
      if (ack && !m.acked) await m.ack();
    }
  }
}

function ct(res: Res): string {
  return res.headers.get('Content-Type') ?? '';
}
