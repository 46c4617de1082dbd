import type { Duplex } from 'node:stream';

/**
 * Joins two byte streams (a user's socket and a pooled connection, or a pooled
 * connection and a target socket) in both directions, and resolves once both
 * have closed.
 *
 * End-of-stream travels as end (after the bytes before it are flushed); an
 * error or a close without end-of-stream on either side destroys the other, so
 * neither end of a tunnel hangs. Errors are swallowed here: the caller learns
 * of them from the resolved value.
 */
export function splice(a: Duplex, b: Duplex): Promise<{ error: Error | undefined }> {
  let firstError: Error | undefined;
  const link = (from: Duplex, to: Duplex): Promise<void> =>
    new Promise((resolve) => {
      from.on('error', (error: Error) => {
        firstError ??= error;
        to.destroy();
      });
      from.once('close', () => {
        if (!from.readableEnded) to.destroy();
        resolve();
      });
      from.pipe(to);
    });
  return Promise.all([link(a, b), link(b, a)]).then(() => ({ error: firstError }));
}
