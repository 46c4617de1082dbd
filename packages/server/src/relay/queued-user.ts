import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';

/**
 * Bytes kept from a queued user before its socket is paused (and its
 * departure goes unseen until it is served): a request's worth. More waits
 * in the kernel's buffer. One read can bring more (up to 64 KiB), and is
 * kept whole: the waiting cap bounds how many users hold one.
 */
const QUEUED_USER_BUFFER_BYTES = 16 * 1024;

/**
 * A user connection waiting for a pooled connection. A paused socket would
 * not surface the user's FIN or reset, so this one keeps reading: what the
 * user sends meanwhile is kept (up to {@link QUEUED_USER_BUFFER_BYTES}, then
 * the socket pauses), and `signal` aborts the moment the user leaves, so that
 * the wait ends at once and no pooled connection is spent on nobody.
 *
 * A user leaves by closing, or by a FIN before sending anything: a client
 * that half-closes after its request (`shutdown(SHUT_WR)`) stays queued, and
 * its end-of-stream is carried once it is served.
 *
 * Its bytes may go to a pooled connection before the agent has claimed it
 * (`sendEarly`), so that they travel with the order: they are kept all the
 * same until the claim, for another connection if this one is given up.
 */
export class QueuedUser {
  readonly socket: Socket;
  readonly #left = new AbortController();
  readonly #chunks: Buffer[] = [];
  #bytes = 0;
  /** The connection that has every kept chunk so far, and gets the next ones as they come. */
  #early: Duplex | undefined;

  constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', this.#onData);
    socket.once('end', this.#onEnd);
    socket.once('close', this.#onClose);
  }

  /** Aborts when the user leaves while queued. */
  get signal(): AbortSignal {
    return this.#left.signal;
  }

  /**
   * Stops watching and writes what the user sent so far to `conn`; from here
   * `splice` carries the stream (and the user's end-of-stream, if it came).
   */
  handOver(conn: Duplex): void {
    this.#stopWatching();
    const chunks = this.#chunks.splice(0);
    if (conn !== this.#early) for (const chunk of chunks) conn.write(chunk);
    this.#early = undefined;
  }

  /** Writes what the user sent so far to `conn`, and what it sends next as it comes, still keeping it all. */
  sendEarly(conn: Duplex): void {
    this.#early = conn;
    for (const chunk of this.#chunks) conn.write(chunk);
  }

  /** The early connection was given up: the kept bytes wait for the next one. */
  withdrawEarly(): void {
    this.#early = undefined;
  }

  /** Stops watching and closes the user's connection (no pooled connection came). */
  drop(): void {
    this.#stopWatching();
    this.socket.destroy();
  }

  #stopWatching(): void {
    // Paused before the 'data' listener goes: a flowing socket without one would drop what arrives.
    this.socket.pause();
    this.socket.removeListener('data', this.#onData);
    this.socket.removeListener('end', this.#onEnd);
    this.socket.removeListener('close', this.#onClose);
  }

  readonly #onData = (chunk: Buffer): void => {
    this.#chunks.push(chunk);
    this.#early?.write(chunk);
    this.#bytes += chunk.length;
    if (this.#bytes >= QUEUED_USER_BUFFER_BYTES) this.socket.pause();
  };

  readonly #onEnd = (): void => {
    if (this.#bytes === 0) this.#left.abort();
  };

  readonly #onClose = (): void => {
    this.#left.abort();
  };
}
