import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';

/** Faults a {@link FaultProxy} applies to what it forwards; each can change while connections are open. */
export interface Faults {
  /** Delay added to every chunk, each way, in ms. */
  latencyMs: number;
  /** Extra random delay, uniform in [0, jitterMs), in ms. Order is kept: a chunk never overtakes the one before it. */
  jitterMs: number;
  /** Silently drop everything, both ways, while keeping both sockets open: a half-open path. */
  blackHole: boolean;
}

/**
 * A TCP proxy on 127.0.0.1 that forwards to `target` with injected faults:
 * latency and jitter, black hole, and reset of every connection. Stands between
 * agent and relay in the reliability tests.
 */
export class FaultProxy {
  readonly faults: Faults = { latencyMs: 0, jitterMs: 0, blackHole: false };
  readonly #server: Server;
  readonly #pairs = new Set<[Socket, Socket]>();
  #target: { host: string; port: number };
  /** Connections accepted since start. */
  accepted = 0;

  private constructor(target: { host: string; port: number }) {
    this.#target = target;
    this.#server = createServer((client) => this.#onClient(client));
  }

  static async start(targetPort: number, targetHost = '127.0.0.1'): Promise<FaultProxy> {
    const proxy = new FaultProxy({ host: targetHost, port: targetPort });
    await new Promise<void>((resolve) => proxy.#server.listen(0, '127.0.0.1', resolve));
    return proxy;
  }

  get port(): number {
    return (this.#server.address() as AddressInfo).port;
  }

  get openConnections(): number {
    return this.#pairs.size;
  }

  /** Sends RST on both sides of every open connection. */
  resetAll(): void {
    for (const [client, upstream] of this.#pairs) {
      client.resetAndDestroy();
      upstream.resetAndDestroy();
    }
  }

  async close(): Promise<void> {
    this.resetAll();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #onClient(client: Socket): void {
    this.accepted++;
    const upstream = connect(this.#target.port, this.#target.host);
    const pair: [Socket, Socket] = [client, upstream];
    this.#pairs.add(pair);
    const teardown = (): void => {
      this.#pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const socket of pair) {
      socket.on('error', teardown);
      socket.on('close', teardown);
    }
    this.#forward(client, upstream);
    this.#forward(upstream, client);
  }

  /**
   * One direction of a connection: chunks wait in a FIFO queue until their due
   * time and are written in order by a single timer. (One timer per chunk would
   * not do: Node does not promise that timers of different durations expiring
   * in the same millisecond fire in the order they were set, which reorders bytes.)
   */
  #forward(from: Socket, to: Socket): void {
    const queue: Array<{ due: number; chunk: Buffer | null }> = [];
    let timer: NodeJS.Timeout | undefined;
    const deliver = (): void => {
      timer = undefined;
      while (queue.length > 0 && queue[0]!.due <= Date.now()) {
        const { chunk } = queue.shift()!;
        if (to.destroyed) return;
        if (chunk === null) to.end();
        else if (!to.write(chunk)) from.pause();
      }
      if (queue.length > 0) timer = setTimeout(deliver, queue[0]!.due - Date.now());
      // Bounded like a real link: stop reading while too much is in the air.
      if (queue.length <= 64 && !to.writableNeedDrain) from.resume();
    };
    const enqueue = (chunk: Buffer | null): void => {
      const { latencyMs, jitterMs } = this.faults;
      const last = queue.at(-1)?.due ?? 0;
      queue.push({ due: Math.max(Date.now() + latencyMs + Math.random() * jitterMs, last), chunk });
      if (queue.length > 64) from.pause();
      timer ??= setTimeout(deliver, queue[0]!.due - Date.now());
    };
    from.on('data', (chunk: Buffer) => {
      if (!this.faults.blackHole) enqueue(chunk);
    });
    from.on('end', () => enqueue(null));
    to.on('drain', () => {
      if (queue.length <= 64) from.resume();
    });
    from.on('close', () => clearTimeout(timer));
  }
}
