import type { Socket } from 'node:net';
import WebSocket from 'ws';
import { ProtocolError } from '../core/errors.js';
import type { IdleConnection, IdleConnectionOwner } from '../transport/pooled-conn.js';
import { PoolConn, rawSocketOf } from '../wire/pool-conn.js';
import { isEndOfStream, type Extensions } from '../wire/extensions.js';
import { CLOSE_UNSUPPORTED_DATA } from '../wire/protocol.js';

/** Bytes kept for the claimer of an idle connection before its socket is paused (backpressure). */
const IDLE_BUFFER_BYTES = 64 * 1024;

const idleSocketByWebSocket = new WeakMap<WebSocket, IdleSocket>();

/**
 * A pooled connection nobody has claimed yet: the WebSocket, its ID and the
 * bytes that arrived for whoever claims it. It becomes a {@link PoolConn} only
 * when claimed, so that a pool of thousands of idle connections does not carry
 * a Duplex stream and its handlers for each. Handlers are shared functions
 * that find their IdleSocket through a WeakMap, not per-socket closures.
 */
export class IdleSocket implements IdleConnection {
  readonly id: string;
  readonly webSocket: WebSocket;
  /** What the connection negotiated on its upgrade. */
  readonly extensions: Extensions;
  /** Who dialled it, as the pool groups connections (a relay: the token's name, else the IP). */
  readonly client: string;
  readonly transport = 'websocket';
  owner: IdleConnectionOwner | undefined;
  #chunks: Buffer[] | undefined;
  #bytes = 0;
  /** The peer's end-of-stream arrived (half-close): nothing more may. */
  #ended = false;

  constructor(ws: WebSocket, id: string, extensions: Extensions, client = '') {
    this.id = id;
    this.webSocket = ws;
    this.extensions = extensions;
    this.client = client;
    idleSocketByWebSocket.set(ws, this);
    ws.binaryType = 'nodebuffer';
    ws.on('message', onIdleMessage);
    ws.on('error', onIdleError);
    ws.on('close', onIdleClose);
  }

  get transportOpen(): boolean {
    return this.webSocket.readyState === WebSocket.OPEN;
  }

  get transportSocket(): Socket {
    return rawSocketOf(this.webSocket);
  }

  /** Hands the connection, and every byte kept for it, to a new PoolConn. */
  claim(): PoolConn {
    this.#detach();
    return new PoolConn(this.webSocket, this.id, { initialChunks: this.#chunks, initialEnd: this.#ended, extensions: this.extensions });
  }

  /** Terminates the connection (a dead or unwanted idle one). `error` is reported to the owner. */
  destroy(error?: Error): void {
    if (error) this.owner?.onError(error);
    this.webSocket.terminate();
  }

  close(code: number, graceMs: number): Promise<void> {
    if (!this.transportOpen) {
      this.destroy();
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.destroy(), graceMs);
      this.webSocket.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      this.webSocket.close(code);
    });
  }

  /** @internal Takes a message that arrived while idle; false if it breaks the protocol. */
  receive(data: Buffer, isBinary: boolean): boolean {
    if (this.#ended) return false;
    if (!isBinary) {
      this.#ended = isEndOfStream(this.extensions, data);
      return this.#ended;
    }
    this.#keep(data);
    return true;
  }

  #keep(data: Buffer): void {
    (this.#chunks ??= []).push(data);
    this.#bytes += data.length;
    if (this.#bytes >= IDLE_BUFFER_BYTES) this.webSocket.pause();
  }

  #detach(): void {
    const ws = this.webSocket;
    ws.removeListener('message', onIdleMessage);
    ws.removeListener('error', onIdleError);
    ws.removeListener('close', onIdleClose);
    idleSocketByWebSocket.delete(ws);
  }
}

function onIdleMessage(this: WebSocket, data: Buffer, isBinary: boolean): void {
  const socket = idleSocketByWebSocket.get(this);
  if (!socket || socket.receive(data, isBinary)) return;
  socket.owner?.onError(new ProtocolError('the peer sent a text message, or a message after its end-of-stream; only binary messages carry the stream'));
  this.close(CLOSE_UNSUPPORTED_DATA, 'binary messages only');
}

function onIdleError(this: WebSocket, error: Error): void {
  idleSocketByWebSocket.get(this)?.owner?.onError(error);
}

function onIdleClose(this: WebSocket): void {
  const socket = idleSocketByWebSocket.get(this);
  if (!socket) return;
  idleSocketByWebSocket.delete(this);
  socket.owner?.onGone(socket);
}
