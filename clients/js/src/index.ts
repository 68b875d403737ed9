/**
 * @postern/client: the JavaScript and TypeScript client of a postern
 * server, for browsers and Node 20 or later. No dependencies.
 *
 * ```js
 * import { Postern } from '@postern/client';
 * const p = new Postern('https://relay.example', { token });
 * await p.channel('/news').publish('hello');
 * for await (const m of p.channel('/news').subscribe()) console.log(m.id, m.data);
 * const { id } = await p.tunnel('jobs').send('job 1');
 * const msg = await p.tunnel('jobs').receive({ pending: true, wait: 30 });
 * await p.inbox('olivia').send({ to: ['maurice'], body: { hi: 1 } });
 * ```
 * @module
 */
import { Channel } from './channel.js';
import { Core, CoreOptions } from './core.js';
import { Inbox } from './inbox.js';
import { Tunnel } from './tunnel.js';

export * from './errors.js';
export { newIdempotencyKey } from './core.js';
export type { Body, CallOptions, RetryOptions } from './core.js';
export { Channel, Subscription } from './channel.js';
export type { ChannelMessage, SubscribeOptions } from './channel.js';
export { Tunnel, TunnelMessage, Payload } from './tunnel.js';
export type { MessagesOptions, ReceiveOptions, ReplyOptions, SendOptions, SendResult, Status } from './tunnel.js';
export { Inbox } from './inbox.js';
export type { Envelope, InboxAck, InboxEntries, InboxEntry, InboxMessage } from './inbox.js';

/** Options of a client. */
export interface PosternOptions extends CoreOptions {
  /** Sent as `Authorization: Bearer <token>` (on websockets: `?access_token=`). */
  token?: string;
  /** The fetch to use (default: the global one). */
  fetch?: typeof fetch;
  /** The client's retry rules (see RetryOptions); `false`: never retry. */
  retry?: CoreOptions['retry'];
  /**
   * The WebSocket class for channel subscriptions (default: the global one,
   * where there is one). `null`: always use Server-Sent Events.
   */
  WebSocket?: typeof WebSocket | null;
  /** Where the server mounts channels: '/c' (the default), '' with --channels-at-root. */
  channelsPrefix?: string;
}

/** A client of one postern server. */
export class Postern {
  private readonly c: Core;
  private readonly o: PosternOptions;

  /**
   * @param url the server ("https://host[:port]", with a path prefix when
   *   postern is mounted below one)
   */
  constructor(url: string | URL, o: PosternOptions = {}) {
    this.c = new Core(url, o);
    this.o = o;
  }

  /** The server's base URL. */
  get url(): string {
    return this.c.base;
  }

  /** The tunnel named id (1 to 1024 of A-Z a-z 0-9 - _). */
  tunnel(id: string): Tunnel {
    return new Tunnel(this.c, id);
  }

  /**
   * The channel named path (1 to 256 Unicode characters), in its canonical
   * form: "//a" and "/x/../a" are "/a"; a leading '/' is added when missing.
   */
  channel(path: string): Channel {
    return new Channel(this.c, path, (this.o.channelsPrefix ?? '/c').replace(/\/$/, ''), this.o.WebSocket);
  }

  /** The inbox of actor: its requests carry `From: actor`. */
  inbox(actor: string): Inbox {
    return new Inbox(this.c, actor);
  }
}
