import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { Extensions } from '../../wire/extensions.js';
import type { IdleConnection, IdleConnectionOwner, PooledConn } from '../pooled-conn.js';
import { leaveUnread } from './read-line.js';

/** What the raw transport has: end-of-stream is TLS close_notify with `allowHalfOpen`; nothing pings. */
export const RAW_EXTENSIONS: Extensions = Object.freeze({ keepAlive: false, halfClose: true });

/** A pooled connection on the raw TLS transport: the TLS socket itself, with the pool's fields. */
export type RawPoolConn = TLSSocket & PooledConn;

/** The TCP socket under each client-side raw connection: the one a reset is sent on. */
const tcpOf = new WeakMap<TLSSocket, Socket>();

function transportOpen(this: TLSSocket): boolean {
  return !this.destroyed && !this.readableEnded && !this.writableEnded;
}

function transportSocket(this: TLSSocket): Socket {
  return this;
}

function refuseTarget(this: TLSSocket): void {
  const tcp = tcpOf.get(this);
  // A reset, not a close_notify: the relay must tell its user "refused", not "served and ended".
  if (tcp && !tcp.destroyed) tcp.resetAndDestroy();
  this.destroy();
}

function emitTransportClose(this: TLSSocket): void {
  this.emit('transportClose', 1000);
}

/**
 * Gives a TLS socket the pooled-connection surface, in place: the pool hands
 * the socket itself out, so that a tunnel's bytes move between two sockets
 * with no stream of ours between them. `tcp` is the TCP socket under it, when
 * we dialled it (an agent), so that `refuseTarget` can reset it.
 */
export function adoptRawConn(socket: TLSSocket, id: string, tcp?: Socket): RawPoolConn {
  if (tcp) tcpOf.set(socket, tcp);
  Object.defineProperties(socket, {
    id: { value: id, enumerable: true },
    transport: { value: 'tls', enumerable: true },
    extensions: { value: RAW_EXTENSIONS, enumerable: true },
    transportOpen: { get: transportOpen },
    transportSocket: { get: transportSocket },
    refuseTarget: { value: refuseTarget },
  });
  socket.once('close', emitTransportClose);
  return socket as RawPoolConn;
}

const idleByConn = new WeakMap<TLSSocket, RawIdleSocket>();

/**
 * A raw connection nobody has claimed yet. It reads, so that a peer that
 * closes it is noticed and the pool drops it; the first bytes that arrive
 * (a user's, sent with its order before the claim) stop the reading and are
 * put back for the claimer, with everything after them left to the kernel.
 */
export class RawIdleSocket implements IdleConnection {
  readonly conn: RawPoolConn;
  readonly client: string;
  owner: IdleConnectionOwner | undefined;

  constructor(conn: RawPoolConn, client = '') {
    this.conn = conn;
    this.client = client;
    idleByConn.set(conn, this);
    conn.on('data', onIdleData);
    conn.on('error', onIdleError);
    conn.on('close', onIdleClose);
  }

  get id(): string {
    return this.conn.id;
  }

  get transport(): 'tls' {
    return 'tls';
  }

  get extensions(): Extensions {
    return RAW_EXTENSIONS;
  }

  get transportOpen(): boolean {
    return this.conn.transportOpen;
  }

  get transportSocket(): Socket {
    return this.conn;
  }

  claim(): PooledConn {
    const { conn } = this;
    conn.removeListener('data', onIdleData);
    conn.removeListener('error', onIdleError);
    conn.removeListener('close', onIdleClose);
    idleByConn.delete(conn);
    // Whoever claims it reads when ready; until then the bytes wait in the stream and the kernel.
    leaveUnread(conn);
    return conn;
  }

  destroy(error?: Error): void {
    if (error) this.owner?.onError(error);
    this.conn.destroy();
  }

  close(_code: number, graceMs: number): Promise<void> {
    const { conn } = this;
    if (conn.destroyed) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => conn.destroy(), graceMs);
      conn.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      conn.end();
    });
  }
}

function onIdleData(this: RawPoolConn, chunk: Buffer): void {
  // Paused first: unshifting into a flowing stream would emit the chunk again at once.
  this.pause();
  this.removeListener('data', onIdleData);
  this.unshift(chunk);
}

function onIdleError(this: RawPoolConn, error: Error): void {
  idleByConn.get(this)?.owner?.onError(error);
}

function onIdleClose(this: RawPoolConn): void {
  const socket = idleByConn.get(this);
  if (!socket) return;
  idleByConn.delete(this);
  socket.owner?.onGone(socket);
}
