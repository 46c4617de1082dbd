import type { Socket } from 'node:net';
import { HandshakeClosedError, HandshakeTimeoutError } from '../../core/errors.js';
import { MAX_PREFACE_BYTES, takeLine } from './preface.js';

/**
 * Reads one line (a preface or its answer) from a raw connection within
 * `timeoutMs`, and leaves the socket paused with whatever followed the line
 * put back, so that the first bytes of the stream reach its reader.
 *
 * Rejects with `ERR_HANDSHAKE_TIMEOUT`, `ERR_HANDSHAKE_CLOSED` (the peer closed
 * first), `ERR_PROTOCOL` (no newline within {@link MAX_PREFACE_BYTES}), or the
 * socket's error; the socket is then destroyed.
 */
export function readLine(socket: Socket, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let buffered: Buffer = Buffer.alloc(0);
    const settle = (outcome: { line: string } | { error: Error }): void => {
      clearTimeout(timer);
      socket.removeListener('data', onData);
      socket.removeListener('end', onClosed);
      socket.removeListener('close', onClosed);
      socket.removeListener('error', onError);
      if ('line' in outcome) {
        resolve(outcome.line);
      } else {
        socket.destroy();
        reject(outcome.error);
      }
    };
    const onData = (chunk: Buffer): void => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      let taken: ReturnType<typeof takeLine>;
      try {
        taken = takeLine(buffered, MAX_PREFACE_BYTES);
      } catch (error) {
        settle({ error: error as Error });
        return;
      }
      if (taken === undefined) return;
      // Paused before the listener goes, so that nothing read from here on is emitted to nobody.
      socket.pause();
      if (taken.rest.length > 0) socket.unshift(taken.rest);
      leaveUnread(socket);
      settle({ line: taken.line });
    };
    const onClosed = (): void => settle({ error: new HandshakeClosedError(1006) });
    const onError = (error: Error): void => settle({ error });
    const timer = setTimeout(() => settle({ error: new HandshakeTimeoutError(timeoutMs) }), timeoutMs);
    socket.on('data', onData);
    socket.once('end', onClosed);
    socket.once('close', onClosed);
    socket.on('error', onError);
  });
}

/**
 * Leaves a paused socket as a new one is: not flowing, yet not "paused by
 * its reader" either, so that whoever adds the next 'data' listener (or
 * pipes it) starts the flow, with what was put back coming first.
 */
export function leaveUnread(socket: Socket): void {
  socket.pause();
  (socket as { readableFlowing: boolean | null }).readableFlowing = null;
}
