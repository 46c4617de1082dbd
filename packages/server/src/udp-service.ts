import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import { DatagramBatch, readDatagrams, type Endpoint, type PoolConn } from '@pool/shared/internal';
import type { ServiceStats } from './public-service.js';
import type { ServiceConfig } from './relay-config.js';

/** How a UDP service treats its flows (a flow: the datagrams of one user address and port). */
export interface UdpOptions {
  /** A flow with no datagram either way for this long is closed on both ends and its pooled connection released, in ms. Default: 60000. */
  idleTimeout?: number;
  /** Most flows open at once; a datagram that would open one more is dropped (and counted). Default: 1024. */
  maxFlows?: number;
  /** The largest datagram carried, either way, in bytes; a larger one is dropped (and counted), never split. Default: 65507. */
  maxDatagram?: number;
}

const UDP_DEFAULTS: Required<UdpOptions> = { idleTimeout: 60_000, maxFlows: 1_024, maxDatagram: 65_507 };

/** Why a datagram was not delivered. */
export type UdpDropReason = 'oversized' | 'flowLimit' | 'queueFull' | 'backpressure' | 'noConnection' | 'sendFailed';

/** A UDP service's datagrams since the relay started. */
export interface UdpStats {
  /** Datagrams and bytes from users (into the tunnel) and to users (out of it). */
  datagrams: { fromUsers: number; toUsers: number };
  bytes: { fromUsers: number; toUsers: number };
  /** Datagrams dropped, by reason. */
  dropped: Record<UdpDropReason, number>;
}

/** Gets a pooled connection the agent has claimed for a new flow, or undefined (counted by the caller's stats). */
export type FlowOpener = (service: UdpService, source: Endpoint, maxDatagram: number, signal: AbortSignal) => Promise<PoolConn | undefined>;

/**
 * What a flow keeps while its pooled connection is being claimed: at most 64
 * datagrams and 64 KiB, so that many new sources sending large datagrams at
 * once hold at most `maxFlows` × 64 KiB. More are dropped.
 */
const OPENING_QUEUE_DATAGRAMS = 64;
const OPENING_QUEUE_BYTES = 64 * 1024;
/** Socket buffers asked of the kernel for the public port (it caps them at its own maximum). */
const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;

/** One user address and port on a UDP service, and the pooled connection that carries its datagrams. */
class UdpFlow {
  conn: PoolConn | undefined;
  /** The datagrams for `conn` of this turn of the event loop, written together. */
  batch: DatagramBatch | undefined;
  queued: Buffer[] = [];
  queuedBytes = 0;
  closed = false;
  readonly closing = new AbortController();
  readonly idle: NodeJS.Timeout;

  constructor(idleTimeoutMs: number, onIdle: () => void) {
    this.idle = setTimeout(onIdle, idleTimeoutMs).unref();
  }
}

/**
 * A UDP service's public port: each user address and port is a flow, carried
 * on a pooled connection of its own that the agent claims for it (a `flow`
 * order), datagrams framed with their length.
 */
export class UdpService {
  readonly config: ServiceConfig;
  readonly stats: ServiceStats & { udp: UdpStats };
  readonly #options: Required<UdpOptions>;
  readonly #socket: UdpSocket;
  readonly #flowBySource = new Map<string, UdpFlow>();
  readonly #openFlow: FlowOpener;
  readonly #onError: (error: Error) => void;
  #listening = false;
  #closed = false;

  constructor(config: ServiceConfig, openFlow: FlowOpener, onError: (error: Error) => void) {
    this.config = config;
    this.#options = { ...UDP_DEFAULTS, ...config.udp };
    this.#openFlow = openFlow;
    this.#onError = onError;
    this.stats = {
      agent: config.agent,
      accepted: 0,
      finished: 0,
      failed: 0,
      open: 0,
      udp: {
        datagrams: { fromUsers: 0, toUsers: 0 },
        bytes: { fromUsers: 0, toUsers: 0 },
        dropped: { oversized: 0, flowLimit: 0, queueFull: 0, backpressure: 0, noConnection: 0, sendFailed: 0 },
      },
    };
    this.#socket = createSocket({ type: config.publicHost !== undefined && isIPv6(config.publicHost) ? 'udp6' : 'udp4' });
    this.#socket.on('message', this.#onDatagram);
  }

  get listening(): boolean {
    return this.#listening;
  }

  /** Binds the public port (IPv4 on all interfaces unless `publicHost` says otherwise). */
  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#socket.once('error', reject);
      this.#socket.bind({ port: this.config.publicPort, address: this.config.publicHost }, () => {
        this.#socket.removeListener('error', reject);
        this.#socket.on('error', this.#onError);
        this.#listening = true;
        for (const size of ['setRecvBufferSize', 'setSendBufferSize'] as const) {
          try {
            this.#socket[size](SOCKET_BUFFER_BYTES);
          } catch {
            // The kernel's own default is what it is; datagrams still flow.
          }
        }
        resolve();
      });
    });
  }

  port(): number {
    return this.#socket.address().port;
  }

  /** Stops listening and ends every flow: on UDP the public port is the users' only connection. */
  close(): void {
    this.#listening = false;
    if (!this.#closed) {
      // Also a socket that never bound (its bind failed, or start() never ran): it holds a handle all the same.
      this.#closed = true;
      this.#socket.close();
    }
    for (const [source, flow] of this.#flowBySource) this.#end(source, flow);
  }

  #drop(reason: UdpDropReason): void {
    this.stats.udp.dropped[reason]++;
  }

  readonly #onDatagram = (datagram: Buffer, from: RemoteInfo): void => {
    const { udp } = this.stats;
    udp.datagrams.fromUsers++;
    udp.bytes.fromUsers += datagram.length;
    if (datagram.length > this.#options.maxDatagram) return this.#drop('oversized');
    const source = `${from.address}|${from.port}`;
    let flow = this.#flowBySource.get(source);
    if (flow === undefined) {
      if (this.#flowBySource.size >= this.#options.maxFlows) return this.#drop('flowLimit');
      flow = this.#start(source, { address: from.address, port: from.port });
    }
    flow.idle.refresh();
    if (flow.batch === undefined) {
      if (flow.queued.length >= OPENING_QUEUE_DATAGRAMS || flow.queuedBytes + datagram.length > OPENING_QUEUE_BYTES) return this.#drop('queueFull');
      flow.queued.push(datagram);
      flow.queuedBytes += datagram.length;
      return;
    }
    this.#forward(flow.batch, datagram);
  };

  #forward(batch: DatagramBatch, datagram: Buffer): void {
    if (!batch.add(datagram)) this.#drop('backpressure');
  }

  #start(source: string, endpoint: Endpoint): UdpFlow {
    const flow = new UdpFlow(this.#options.idleTimeout, () => this.#end(source, flow));
    this.#flowBySource.set(source, flow);
    this.stats.accepted++;
    this.stats.open++;
    // An opener that fails is a flow without a connection, never an unhandled rejection.
    void this.#openFlow(this, endpoint, this.#options.maxDatagram, flow.closing.signal)
      .catch((error: unknown) => {
        this.#onError(error as Error);
        return undefined;
      })
      .then((conn) => this.#opened(source, flow, endpoint, conn));
    return flow;
  }

  #opened(source: string, flow: UdpFlow, user: Endpoint, conn: PoolConn | undefined): void {
    if (conn === undefined || flow.closed) {
      conn?.destroy();
      this.stats.udp.dropped.noConnection += flow.queued.length;
      if (!flow.closed) this.stats.failed++;
      this.#end(source, flow);
      return;
    }
    flow.conn = conn;
    const batch = new DatagramBatch(conn);
    flow.batch = batch;
    conn.on('error', () => {});
    conn.once('close', () => this.#end(source, flow));
    readDatagrams(
      conn,
      this.#options.maxDatagram,
      (datagrams) => {
        if (datagrams.length > 0) flow.idle.refresh();
        for (const datagram of datagrams) this.#reply(datagram, user);
      },
      this.#onError,
    );
    for (const datagram of flow.queued.splice(0)) this.#forward(batch, datagram);
  }

  #reply(datagram: Buffer, user: Endpoint): void {
    if (!this.#listening) return;
    const { udp } = this.stats;
    udp.datagrams.toUsers++;
    udp.bytes.toUsers += datagram.length;
    this.#socket.send(datagram, user.port, user.address, (error) => {
      if (error) this.#drop('sendFailed');
    });
  }

  #end(source: string, flow: UdpFlow): void {
    if (flow.closed) return;
    flow.closed = true;
    clearTimeout(flow.idle);
    flow.closing.abort();
    this.#flowBySource.delete(source);
    this.stats.open--;
    this.stats.finished++;
    flow.batch?.discard();
    flow.conn?.destroy();
  }
}
