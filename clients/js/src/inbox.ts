import { CallOptions, Core, Res, newIdempotencyKey, text, utf8 } from './core.js';

/** A message to several actors. */
export interface Envelope {
  /** The actors that get a copy. */
  to: string[] | string;
  /** Any JSON value (default null). */
  body?: unknown;
  /** Ask each destination for an ack when it receives the message. */
  expectsAck?: boolean;
  /**
   * Identifies the message per (origin, destination): 12 to 64 of
   * A-Z a-z 0-9 - _ =. Sending again with the same key is safe. Default:
   * a new random key (kept across retries).
   */
  idempotencyKey?: string;
}

/** A message received. */
export interface InboxMessage {
  type: 'msg';
  idempotencyKey: string;
  /** The actor that sent it. */
  origin: string;
  body: unknown;
  expectsAck: boolean;
  /** When it was sent, to the second. */
  sentAt: Date;
}

/** Says that destination received the message this inbox sent with idempotencyKey. */
export interface InboxAck {
  type: 'ack';
  idempotencyKey: string;
  destination: string;
  /** When it was received, to the second. */
  receivedAt: Date;
}

export type InboxEntry = InboxMessage | InboxAck;

/**
 * The entries of one receive, oldest first. remaining is how many were
 * still waiting when the server's per-receive cap was reached (0 when this
 * is everything): receive again to get them.
 */
export interface InboxEntries extends Array<InboxEntry> {
  remaining: number;
}

/**
 * The inbox of one actor (the echoes wire format under /inbox): it sends
 * addressed JSON messages as that actor and receives the messages and acks
 * addressed to it.
 */
export class Inbox {
  /** The name the inbox acts as (the `From` header). */
  readonly actor: string;
  private readonly c: Core;

  constructor(c: Core, actor: string) {
    this.c = c;
    this.actor = actor;
  }

  /**
   * Stores one copy of the message per destination and returns the number
   * of destinations.
   */
  async send(env: Envelope, o?: CallOptions): Promise<number> {
    const res = await this.post('send', env, o);
    return JSON.parse(text(res.data)).sent;
  }

  /**
   * Takes the messages and acks waiting for the actor, oldest first; they
   * are removed from the server.
   */
  async receive(o?: CallOptions): Promise<InboxEntries> {
    return entries(await this.post('receive', undefined, o));
  }

  /** Sends the message, then receives, in one request. */
  async exchange(env: Envelope, o?: CallOptions): Promise<InboxEntries> {
    return entries(await this.post('exchange', env, o));
  }

  private post(op: string, env: Envelope | undefined, o?: CallOptions): Promise<Res> {
    const body = env
      ? JSON.stringify({
          idempotencyKey: env.idempotencyKey ?? newIdempotencyKey(),
          destination: typeof env.to == 'string' ? [env.to] : env.to,
          body: env.body ?? null,
          expectsAck: !!env.expectsAck,
        })
      : '';
    // Every inbox call is safe to repeat: a send is keyed (the key is made
    // once, above), and a repeated receive takes only what is still there.
    return this.c.call(
      {
        method: 'POST',
        path: '/inbox/' + op,
        body: utf8(body),
        headers: { 'Content-Type': 'application/json', From: this.actor },
        idem: true,
      },
      [200],
      o,
    );
  }
}

/** The entries of a receive or exchange answer. */
function entries(res: Res): InboxEntries {
  const e = (JSON.parse(text(res.data)) as any[]).map(
    (w): InboxEntry =>
      w.type == 'ack'
        ? { type: 'ack', idempotencyKey: w.idempotencyKey, destination: w.destination, receivedAt: new Date(w.receivedAt) }
        : { type: 'msg', idempotencyKey: w.idempotencyKey, origin: w.origin, body: w.body, expectsAck: !!w.expectsAck, sentAt: new Date(w.sentAt) },
  ) as InboxEntries;
  e.remaining = +(res.headers.get('X-Inbox-Remaining') ?? 0);
  return e;
}
