/**
 * Errors of the client. Every failed call rejects with a {@link PosternError}
 * (or a subclass), except an aborted one, which rejects with its signal's
 * reason, as `fetch` does.
 */

/** An answer the client did not expect, or no answer at all. */
export class PosternError extends Error {
  /** The HTTP status; 0 when no answer came (the connection failed). */
  readonly status: number;
  /** The problems the server listed (the inbox lists several). */
  readonly details: string[];
  /** Seconds the server asked to wait before trying again (`Retry-After`). */
  readonly retryAfter?: number;

  constructor(status: number, message: string, details: string[] = [], retryAfter?: number, cause?: unknown) {
    super(`postern: ${status ? status + ' ' : ''}${message}`, cause === undefined ? undefined : { cause });
    this.status = status;
    this.details = details;
    this.retryAfter = retryAfter;
  }
}

/** A tunnel or inbox is full: consumers are not keeping up (507). */
export class QueueFullError extends PosternError {
  /** The tunnel's length when the message was refused (tunnels only). */
  queueSize?: number;
}

/** The token (or its absence) does not allow the call (401, 403). */
export class ForbiddenError extends PosternError {}

/** The body is larger than the server accepts (413). */
export class TooLargeError extends PosternError {}

/**
 * A reply or acknowledgement named a message that is not pending: unknown,
 * never received in pending mode, or already acknowledged (the server
 * answered 204).
 */
export class NotPendingError extends PosternError {}

// Names survive minification (a bundler renames the classes).
for (const [c, n] of [
  [PosternError, 'PosternError'],
  [QueueFullError, 'QueueFullError'],
  [ForbiddenError, 'ForbiddenError'],
  [TooLargeError, 'TooLargeError'],
  [NotPendingError, 'NotPendingError'],
] as const) c.prototype.name = n;
