import { IdleSocket } from './idle-socket.js';
import type { KeepAliveSweeper } from './keep-alive.js';
import type { IdleConnection, IdleConnectionOwner, PooledConn } from '../transport/pooled-conn.js';

/** How long `closeAll` waits for peers to answer the close handshake before terminating, in ms. */
const CLOSE_GRACE_MS = 1_000;

/** Arrival order of one client's idle connections; entries taken or closed since are skipped lazily. */
class Arrivals {
  /**
   * Iterating a Map from its start after many deletions walks the holes V8
   * leaves until it rehashes, so keep a queue with a moving head.
   */
  #queue: IdleConnection[] = [];
  #head = 0;

  push(socket: IdleConnection): void {
    this.#queue.push(socket);
  }

  /** The oldest entry that `isLive` accepts, dropping the dead ones before it; undefined when none. */
  peek(isLive: (socket: IdleConnection) => boolean): IdleConnection | undefined {
    while (this.#head < this.#queue.length) {
      const candidate = this.#queue[this.#head]!;
      if (isLive(candidate)) return candidate;
      this.#head++;
    }
    this.#compact(isLive, true);
    return undefined;
  }

  /** Keeps the queue within about twice the live entries (connections taken by ID leave stale entries). */
  compact(isLive: (socket: IdleConnection) => boolean, live: number): void {
    if (this.#queue.length - this.#head > 2 * live + 64) this.#compact(isLive, true);
    else this.#compact(isLive, false);
  }

  #compact(isLive: (socket: IdleConnection) => boolean, force: boolean): void {
    if (!force && this.#head < 1024 && this.#head * 2 < this.#queue.length) return;
    this.#queue = this.#queue.slice(this.#head).filter(isLive);
    this.#head = 0;
  }
}

/**
 * The idle half of a pool: connections waiting to be claimed, keyed by ID,
 * grouped by client, in arrival order. While a connection sits here the pool
 * owns it: its errors are reported to `onError` rather than crashing the
 * process, it is pinged if its peer negotiated keep-alive, and it is dropped
 * the moment its WebSocket closes, so a dead connection is never handed out.
 * Claiming one turns it into a {@link PooledConn} with every byte that arrived for it.
 */
export class IdleConnections {
  readonly #idleById = new Map<string, IdleConnection>();
  readonly #arrivalsByClient = new Map<string, Arrivals>();
  readonly #countByClient = new Map<string, number>();
  /** Arrival stamps, so that the oldest connection of any client can be found. */
  readonly #arrivalOf = new WeakMap<IdleConnection, number>();
  #arrivals = 0;
  readonly #sweeper: KeepAliveSweeper;
  /** Shared by every idle socket of this pool: no per-connection closures. */
  readonly #owner: IdleConnectionOwner;
  readonly #isLive = (socket: IdleConnection): boolean => this.#idleById.get(socket.id) === socket;

  /**
   * @param sweeper the pool's keep-alive, for connections that negotiated it.
   * @param onError called with errors of idle connections.
   * @param onGone called with an idle connection that closed.
   */
  constructor(sweeper: KeepAliveSweeper, onError: (error: Error) => void, onGone: (socket: IdleConnection) => void) {
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

  /** Idle connections of `client`. */
  sizeOf(client: string): number {
    return this.#countByClient.get(client) ?? 0;
  }

  /**
   * Adds a connection; it is pinged if it negotiated keep-alive. A connection
   * with the ID of one already here replaces it (the old one is terminated):
   * only a relay restart can reuse a live ID, and then the old one is stale.
   */
  add(socket: IdleConnection): void {
    this.#idleById.get(socket.id)?.destroy();
    socket.owner = this.#owner;
    this.#idleById.set(socket.id, socket);
    this.#countByClient.set(socket.client, this.sizeOf(socket.client) + 1);
    this.#arrivalOf.set(socket, this.#arrivals++);
    let arrivals = this.#arrivalsByClient.get(socket.client);
    if (arrivals === undefined) {
      arrivals = new Arrivals();
      this.#arrivalsByClient.set(socket.client, arrivals);
    }
    arrivals.push(socket);
    arrivals.compact(this.#isLive, this.sizeOf(socket.client));
    if (socket instanceof IdleSocket && socket.extensions.keepAlive) this.#sweeper.track(socket);
  }

  /** Removes the live connection with this ID, if there is one, and returns it as a PooledConn. */
  take(id: string): PooledConn | undefined {
    const socket = this.#idleById.get(id);
    if (socket === undefined) return undefined;
    this.#remove(socket);
    if (socket.transportOpen) return socket.claim();
    socket.destroy();
    return undefined;
  }

  /**
   * Removes the longest-idle live connection (of `client` when given, else of
   * any client), if there is one, and returns it as a PooledConn with its client.
   */
  takeOldest(client?: string): { conn: PooledConn; client: string } | undefined {
    for (;;) {
      const oldest = client === undefined ? this.#oldestOfAll() : this.#arrivalsByClient.get(client)?.peek(this.#isLive);
      if (oldest === undefined) return undefined;
      const conn = this.take(oldest.id);
      if (conn) return { conn, client: oldest.client };
    }
  }

  #oldestOfAll(): IdleConnection | undefined {
    let oldest: IdleConnection | undefined;
    for (const [client, arrivals] of this.#arrivalsByClient) {
      const candidate = arrivals.peek(this.#isLive);
      if (candidate === undefined) {
        this.#arrivalsByClient.delete(client);
      } else if (oldest === undefined || this.#arrivalOf.get(candidate)! < this.#arrivalOf.get(oldest)!) {
        oldest = candidate;
      }
    }
    return oldest;
  }

  /**
   * Closes every idle connection (of `client` when given) with `code` (1001,
   * going away, by default) and resolves once their peers have answered, or
   * after a short grace period in which the stragglers are terminated.
   */
  async closeAll(code = 1001, client?: string): Promise<void> {
    const sockets = [...this.#idleById.values()].filter((socket) => client === undefined || socket.client === client);
    // Closing them is ours: what they report now is expected, but the pool still hears that they are gone.
    const closingOwner: IdleConnectionOwner = { onError: () => {}, onGone: this.#owner.onGone };
    for (const socket of sockets) {
      this.#remove(socket);
      socket.owner = closingOwner;
    }
    await Promise.all(sockets.map((socket) => socket.close(code, CLOSE_GRACE_MS)));
  }

  /** Destroys every idle connection (of `client` when given) that negotiated no keep-alive; returns how many. */
  destroyUnwatched(client?: string): number {
    const sockets = [...this.#idleById.values()].filter((socket) => !socket.extensions.keepAlive && (client === undefined || socket.client === client));
    for (const socket of sockets) socket.destroy();
    return sockets.length;
  }

  #remove(socket: IdleConnection): void {
    if (this.#idleById.get(socket.id) === socket) {
      this.#idleById.delete(socket.id);
      const left = this.sizeOf(socket.client) - 1;
      if (left > 0) this.#countByClient.set(socket.client, left);
      else this.#countByClient.delete(socket.client);
    }
    if (socket instanceof IdleSocket) this.#sweeper.untrack(socket);
  }
}
