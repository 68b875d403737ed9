import { ForbiddenError, PosternError, QueueFullError, TooLargeError } from './errors.js';

/**
 * How a call retries. A call is retried when the server refused it before
 * doing anything (429), and, for idempotent calls only (see the README),
 * when it answered 502, 503 or 504 or the connection failed. `Retry-After`
 * is honoured; without it the wait doubles from `minDelay` up to
 * `maxDelay`, with jitter. An answer asking for a longer wait than
 * `maxDelay` is not retried: the error carries `retryAfter`.
 */
export interface RetryOptions {
  /** Tries in all, the first included (default 4). */
  attempts?: number;
  /** The first wait in milliseconds (default 250). */
  minDelay?: number;
  /** The longest wait in milliseconds (default 30000). */
  maxDelay?: number;
}

/** What every call takes. */
export interface CallOptions {
  /** Aborts the call; it then rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Overrides the client's retry rules for this call; `false`: one try. */
  retry?: RetryOptions | false;
}

/** A message body: text, bytes, or any other value sent as JSON. */
export type Body = string | ArrayBuffer | ArrayBufferView | Blob | object | number | boolean | null;

/** One call to the server. */
export interface Req {
  method: string;
  /** Below the base URL, already escaped. */
  path: string;
  query?: Record<string, string>;
  body?: Uint8Array | Blob;
  headers?: Record<string, string>;
  /** Safe to repeat after a failure whose outcome is unknown. */
  idem?: boolean;
}

/** An answer, its body read. */
export interface Res {
  status: number;
  headers: Headers;
  data: Uint8Array;
}

export const DEFAULT_RETRY: Required<RetryOptions> = { attempts: 4, minDelay: 250, maxDelay: 30000 };

const enc = new TextEncoder();
const dec = new TextDecoder();

export const utf8 = (s: string) => enc.encode(s);
export const text = (b: Uint8Array) => dec.decode(b);

/** The body and content type that a value is sent as. */
export function encodeBody(b: Body | undefined, contentType?: string): [Uint8Array | Blob, string | undefined] {
  if (typeof b === 'string') return [utf8(b), contentType];
  if (b instanceof ArrayBuffer) return [new Uint8Array(b), contentType];
  if (ArrayBuffer.isView(b)) return [new Uint8Array(b.buffer, b.byteOffset, b.byteLength), contentType];
  if (typeof Blob != 'undefined' && b instanceof Blob) return [b, contentType || b.type || undefined];
  return [utf8(JSON.stringify(b ?? null)), contentType || 'application/json'];
}

/** A random url-safe key: 32 random bytes in base64 (43 characters). */
export function newIdempotencyKey(): string {
  const b = crypto.getRandomValues(new Uint8Array(32));
  return btoa(String.fromCharCode(...b)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** Waits ms, or rejects with the signal's reason when it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const done = () => {
      signal?.removeEventListener('abort', stop);
      resolve();
    };
    const t = setTimeout(done, ms);
    const stop = () => {
      clearTimeout(t);
      reject(signal!.reason);
    };
    signal?.addEventListener('abort', stop, { once: true });
  });
}

/** The wait before try n+1 (n from 0): doubling, capped, jittered to 50-100 %. */
export function backoff(n: number, r: Required<RetryOptions>): number {
  const d = Math.min(r.maxDelay, r.minDelay * 2 ** Math.min(n, 30));
  return d / 2 + (Math.random() * d) / 2;
}

/**
 * Whether an error deserves another try: a refusal before anything was
 * done (429), or, when the call is idempotent, an unknown outcome (no
 * answer, 502, 503, 504).
 */
export function retriable(e: unknown, idem?: boolean): boolean {
  if (!(e instanceof PosternError)) return false;
  const s = e.status;
  return s == 429 || (!!idem && (s == 0 || s == 502 || s == 503 || s == 504));
}

/** Seconds of a Retry-After header (delta-seconds or an HTTP date). */
function retryAfter(h: Headers): number | undefined {
  const v = h.get('Retry-After');
  if (!v) return undefined;
  const n = /^\d+$/.test(v) ? +v : (Date.parse(v) - Date.now()) / 1000;
  return isNaN(n) ? undefined : Math.max(0, n);
}

/**
 * The error an unexpected answer deserves: the server's one-line message
 * (text, or the inbox's JSON `{error, details}`).
 */
export function errorOf(res: Res): PosternError {
  let msg = text(res.data).trim();
  let details: string[] = [];
  if (msg[0] == '{') {
    try {
      const j = JSON.parse(msg);
      if (typeof j.error == 'string') {
        details = Array.isArray(j.details) ? j.details.map(String) : [];
        msg = j.error + (details.length ? ': ' + details.join('; ') : '');
      }
    } catch {
      // Not JSON after all: keep the text.
    }
  }
  msg = msg.split('\n')[0].slice(0, 500);
  const s = res.status;
  const C =
    s == 401 || s == 403
      ? ForbiddenError
      : s == 413
        ? TooLargeError
        : s == 507 && (res.headers.has('X-Queue-Size') || details.length)
          ? QueueFullError
          : PosternError;
  const e = new C(s, msg, details, retryAfter(res.headers));
  const q = res.headers.get('X-Queue-Size');
  if (e instanceof QueueFullError && q) e.queueSize = +q;
  return e;
}

/** Options of a client that its parts share. */
export interface CoreOptions {
  token?: string;
  fetch?: typeof fetch;
  retry?: RetryOptions | false;
}

/** The HTTP side of a client: URLs, the token, retries. */
export class Core {
  readonly base: string;
  readonly token?: string;
  /** The fetch every request goes through. */
  readonly fetch: typeof fetch;
  private readonly retry: RetryOptions | false;

  constructor(base: string | URL, o: CoreOptions) {
    const u = new URL(base);
    if (!/^https?:$/.test(u.protocol)) throw new TypeError(`postern: server URL ${u}: want http:// or https://`);
    this.base = u.origin + u.pathname.replace(/\/+$/, '');
    this.token = o.token;
    // Bound, so that a browser's fetch is not called on another object.
    this.fetch = o.fetch ?? ((i, init) => fetch(i, init));
    this.retry = o.retry ?? {};
  }

  url(path: string, query?: Record<string, string>): string {
    const q = query && new URLSearchParams(query).toString();
    return this.base + path + (q ? '?' + q : '');
  }

  auth(h: Record<string, string>): Record<string, string> {
    if (this.token) h.Authorization = 'Bearer ' + this.token;
    return h;
  }

  /** The retry rules of a call: its own, else the client's. */
  rules(o?: CallOptions): Required<RetryOptions> {
    const r = o?.retry ?? this.retry;
    return r === false ? { ...DEFAULT_RETRY, attempts: 1 } : { ...DEFAULT_RETRY, ...r };
  }

  /**
   * Sends req, retrying as the rules allow, and returns the answer if its
   * status is one of ok; any other status rejects with errorOf.
   */
  async call(req: Req, ok: number[], o?: CallOptions): Promise<Res> {
    const r = this.rules(o);
    const signal = o?.signal;
    for (let n = 0; ; n++) {
      try {
        const res = await this.once(req, signal);
        if (ok.includes(res.status)) return res;
        throw errorOf(res);
      } catch (e) {
        if (signal?.aborted) throw signal.reason;
        if (n + 1 >= r.attempts || !retriable(e, req.idem)) throw e;
        const after = (e as PosternError).retryAfter;
        if (after !== undefined && after * 1000 > r.maxDelay) throw e;
        await sleep(after !== undefined ? after * 1000 : backoff(n, r), signal);
      }
    }
  }

  /** One try: the answer with its body, or a PosternError with status 0. */
  private async once(req: Req, signal?: AbortSignal): Promise<Res> {
    const url = this.url(req.path, req.query);
    try {
      const resp = await this.fetch(url, {
        method: req.method,
        headers: this.auth({ ...req.headers }),
        body: req.body as BodyInit | undefined,
        signal,
      });
      return { status: resp.status, headers: resp.headers, data: new Uint8Array(await resp.arrayBuffer()) };
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      throw new PosternError(0, `${req.method} ${url}: ${(e as Error)?.message ?? e}`, [], undefined, e);
    }
  }
}
