import { IdleSocket, type IdleSocketOwner } from './idle-socket.js';
import type { KeepAliveSweeper } from './keep-alive.js';
import type { PoolConn } from './pool-conn.js';

/** How long `closeAll` waits for peers to answer the close handshake before terminating, in ms. */
const CLOSE_GRACE_MS = 1_000;

/**
 * The idle half of a pool: connections waiting to be claimed, keyed by ID in
 * arrival order. While a connection sits here the pool owns it: its errors are
 * reported to `onError` rather than crashing the process, it is pinged if its
 * peer negotiated keep-alive, and it is dropped the moment its WebSocket
 * closes, so a dead connection is never handed out. Claiming one turns it into
 * a {@link PoolConn} with every byte that arrived for it.
 */
export class IdleConnections {
  readonly #idleById = new Map<string, IdleSocket>();
  /**
   * Arrival order for takeOldest. Iterating the Map from its start after many
   * deletions walks the holes V8 leaves until it rehashes, so keep a queue;
   * entries whose connection has gone are skipped lazily.
   */
  #arrivals: IdleSocket[] = [];
  #arrivalsHead = 0;
  readonly #sweeper: KeepAliveSweeper;
  /** Shared by every idle socket of this pool: no per-connection closures. */
  readonly #owner: IdleSocketOwner;

  /**
   * @param sweeper the pool's keep-alive, for connections that negotiated it.
   * @param onError called with errors of idle connections.
   * @param onGone called with an idle connection that closed.
   */
  constructor(sweeper: KeepAliveSweeper, onError: (error: Error) => void, onGone: (socket: IdleSocket) => void) {
    this.#sweeper = sweeper;
    this.#owner = {
      onError,
      onGone: (socket) => {
        this.#remove(socket);
        onGone(socket);
      },
    };
  }

  get size(): number {
    return this.#idleById.size;
  }

  /**
   * Adds a connection; it is pinged if it negotiated keep-alive. A connection
   * with the ID of one already here replaces it (the old one is terminated):
   * only a relay restart can reuse a live ID, and then the old one is stale.
   */
  add(socket: IdleSocket): void {
    this.#idleById.get(socket.id)?.destroy();
    socket.owner = this.#owner;
    this.#idleById.set(socket.id, socket);
    this.#arrivals.push(socket);
    // Connections taken by ID leave stale entries behind: keep the queue within twice the pool.
    if (this.#arrivals.length - this.#arrivalsHead > 2 * this.#idleById.size + 64) this.#compactArrivals(true);
    if (socket.extensions.keepAlive) this.#sweeper.track(socket);
  }

  /** Removes the live connection with this ID, if there is one, and returns it as a PoolConn. */
  take(id: string): PoolConn | undefined {
    const socket = this.#idleById.get(id);
    if (socket === undefined) return undefined;
    this.#remove(socket);
    if (socket.transportOpen) return socket.claim();
    socket.destroy();
    return undefined;
  }

  /** Removes the longest-idle live connection, if there is one, and returns it as a PoolConn. */
  takeOldest(): PoolConn | undefined {
    while (this.#arrivalsHead < this.#arrivals.length) {
      const candidate = this.#arrivals[this.#arrivalsHead++]!;
      if (this.#idleById.get(candidate.id) !== candidate) continue; // taken or closed since
      const conn = this.take(candidate.id);
      if (conn) {
        this.#compactArrivals();
        return conn;
      }
    }
    this.#compactArrivals();
    return undefined;
  }

  #compactArrivals(force = false): void {
    if (!force && this.#arrivalsHead < 1024 && this.#arrivalsHead * 2 < this.#arrivals.length) return;
    this.#arrivals = this.#arrivals.slice(this.#arrivalsHead).filter((socket) => this.#idleById.get(socket.id) === socket);
    this.#arrivalsHead = 0;
  }

  /**
   * Closes every idle connection with `code` (1001, going away, by default) and
   * resolves once their peers have answered, or after a short grace period in
   * which the stragglers are terminated.
   */
  async closeAll(code = 1001): Promise<void> {
    const sockets = [...this.#idleById.values()];
    // Closing them is ours: what they report now is expected, but the pool still hears that they are gone.
    const closingOwner: IdleSocketOwner = { onError: () => {}, onGone: this.#owner.onGone };
    for (const socket of sockets) {
      this.#remove(socket);
      socket.owner = closingOwner;
    }
    this.#arrivals = [];
    this.#arrivalsHead = 0;
    await Promise.all(sockets.map((socket) => closeWithin(socket, code, CLOSE_GRACE_MS)));
  }

  #remove(socket: IdleSocket): void {
    if (this.#idleById.get(socket.id) === socket) this.#idleById.delete(socket.id);
    this.#sweeper.untrack(socket);
  }
}

function closeWithin(socket: IdleSocket, code: number, graceMs: number): Promise<void> {
  if (!socket.transportOpen) {
    socket.destroy();
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    const timer = setTimeout(() => socket.destroy(), graceMs);
    socket.webSocket.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
    socket.webSocket.close(code);
  });
}
