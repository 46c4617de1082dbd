import type { Duplex } from 'node:stream';

/** How a splice ended. */
export interface SpliceResult {
  /** The first error either side emitted (a reset, a protocol error, …); undefined for a clean end. */
  error: Error | undefined;
}

/**
 * How long a side is kept, once everything has been written to it, while we
 * discard what it still sends after the other side closed, in ms. Closing a
 * socket with unread bytes makes the kernel send a reset, which can destroy
 * the tail of what was just written; draining first lets it arrive.
 */
export const LINGER_MS = 2_000;

/**
 * Joins two byte streams (a user's socket and a pooled connection, or a pooled
 * connection and a target socket) in both directions, with backpressure, and
 * resolves once both have closed, which they always do:
 *
 * - End-of-stream is carried as end-of-stream: when one side's readable ends,
 *   the other side's writable is ended and the opposite direction stays open
 *   (half-close: both sides are set `allowHalfOpen`). When both directions
 *   have ended, both sides close by themselves.
 * - A side that errors, or closes before its readable ended (destroyed, reset),
 *   destroys the other: a reset travels as a reset.
 * - A side that closes after its readable ended, while the other still sends
 *   (a peer without half-close closes both directions at once), ends the
 *   other after flushing what was written to it; what that side still sends
 *   has nowhere to go and is discarded for up to {@link LINGER_MS}, then it is
 *   destroyed.
 *
 * Errors are swallowed here (an `'error'` listener stays on both sides): the
 * caller learns of the first one from the resolved value.
 */
export function splice(a: Duplex, b: Duplex): Promise<SpliceResult> {
  return new Promise((resolve) => {
    let firstError: Error | undefined;
    let open = 2;
    const join = (from: Duplex, to: Duplex): void => {
      let closed = false;
      const onClose = (): void => {
        if (closed) return;
        closed = true;
        if (!from.readableEnded) to.destroy();
        else if (!to.readableEnded) endAndDiscard(to);
        if (--open === 0) resolve({ error: firstError });
      };
      from.on('error', (error: Error) => {
        firstError ??= error;
        to.destroy();
      });
      const carryEnd = (): void => {
        if (!to.destroyed) to.end();
      };
      from.once('close', onClose);
      from.pipe(to, { end: false });
      // Ended or closed before we came (a user who sent its request and
      // half-closed while queued): those events will not come again.
      if (from.readableEnded) queueMicrotask(carryEnd);
      else from.once('end', carryEnd);
      if (from.closed) queueMicrotask(onClose);
    };
    a.allowHalfOpen = true;
    b.allowHalfOpen = true;
    join(a, b);
    join(b, a);
  });
}

/** Ends `side` once what was written to it is flushed, drops what it still sends, and closes it. */
function endAndDiscard(side: Duplex): void {
  if (side.destroyed) return;
  const linger = setTimeout(() => side.destroy(), LINGER_MS).unref();
  side.once('close', () => clearTimeout(linger));
  side.unpipe();
  side.on('data', discard);
  side.resume();
  side.end();
}

function discard(): void {}
