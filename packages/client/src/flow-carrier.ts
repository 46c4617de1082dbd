import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { FlowWriter, readDatagrams, type PooledConn, type ReadFrame } from '@pool/shared/internal';

/** A UDP target by address (resolved once per carrier, not per flow). */
export interface ResolvedTarget {
  address: string;
  family: 4 | 6;
  port: number;
}

/** What the agent counts about its flows; the carrier updates it in place. */
export interface FlowCounters {
  flowsOpen: number;
  /** Flows whose socket could not be opened (out of file descriptors, …); the relay is told to end them. */
  flowFailures: number;
  /** Target replies not sent back: larger than the service's maximum, or while the carrier was backed up. */
  datagramsDropped: { oversized: number; backpressure: number };
}

/**
 * Most flows one carrier may open sockets for: the relay keeps far fewer
 * (its table), so this only bounds what a relay that breaks the protocol
 * could cost this host. Beyond it a new flow is ended at once.
 */
const MAX_FLOWS_PER_CARRIER = 4_096;
/** Datagrams a flow keeps while its socket connects (a moment: the address is resolved already). */
const CONNECTING_QUEUE_DATAGRAMS = 64;

/** One flow's socket, connected to the target, and what waits for the connect. */
interface FlowSocket {
  socket: UdpSocket;
  connecting: Buffer[] | undefined;
}

/**
 * The agent's end of a carrier: a pooled connection on which the relay
 * sends the datagrams of many flows of one service, each under its flow
 * number. Each flow gets a UDP socket of its own, connected to the target,
 * so the target's replies come back under the number of the user who asked
 * and nobody else's; a flow-end frame from the relay closes it, and a socket
 * that fails is ended towards the relay. The carrier's close ends every flow.
 */
export class FlowCarrier {
  readonly #conn: PooledConn;
  readonly #target: ResolvedTarget;
  readonly #maxDatagram: number;
  readonly #counters: FlowCounters;
  readonly #writer: FlowWriter;
  readonly #socketByFlow = new Map<number, FlowSocket>();
  readonly #onTargetError: (error: Error) => void;

  constructor(conn: PooledConn, target: ResolvedTarget, maxDatagram: number, counters: FlowCounters, onTargetError: (error: Error) => void) {
    this.#conn = conn;
    this.#target = target;
    this.#maxDatagram = maxDatagram;
    this.#counters = counters;
    this.#onTargetError = onTargetError;
    this.#writer = new FlowWriter(conn);
  }

  /** Carries flows until the connection closes; resolves once every flow's socket is closed. */
  run(onProtocolError: (error: Error) => void): Promise<void> {
    // The connection may have closed while the target's address was looked up: then there is nothing to carry.
    if (this.#conn.closed) return Promise.resolve();
    readDatagrams(this.#conn, this.#maxDatagram, this.#fromRelay, onProtocolError);
    return new Promise((resolve) => {
      this.#conn.once('close', () => {
        this.#writer.discard();
        for (const flow of [...this.#socketByFlow.keys()]) this.#close(flow);
        resolve();
      });
    });
  }

  readonly #fromRelay = (frames: ReadFrame[]): void => {
    for (const { flow, datagram } of frames) {
      if (datagram === undefined) {
        this.#close(flow);
        continue;
      }
      const entry = this.#socketByFlow.get(flow) ?? this.#open(flow);
      if (entry === undefined) continue;
      if (entry.connecting === undefined) entry.socket.send(datagram);
      else if (entry.connecting.length < CONNECTING_QUEUE_DATAGRAMS) entry.connecting.push(datagram);
    }
  };

  #open(flow: number): FlowSocket | undefined {
    if (this.#socketByFlow.size >= MAX_FLOWS_PER_CARRIER) {
      this.#fail(flow, new Error(`more than ${MAX_FLOWS_PER_CARRIER} UDP flows on one pooled connection`));
      return undefined;
    }
    const socket = createSocket(this.#target.family === 6 ? 'udp6' : 'udp4');
    const entry: FlowSocket = { socket, connecting: [] };
    this.#socketByFlow.set(flow, entry);
    this.#counters.flowsOpen++;
    socket.on('error', (error) => {
      // Before the connect: no socket (out of descriptors, …), so the flow cannot go on. After it:
      // ICMP news of a target that is not listening, which a later datagram may find changed.
      if (entry.connecting !== undefined && this.#socketByFlow.get(flow) === entry) this.#fail(flow, error);
      else this.#onTargetError(error);
    });
    socket.on('message', (datagram: Buffer) => {
      if (datagram.length > this.#maxDatagram) this.#counters.datagramsDropped.oversized++;
      else if (!this.#writer.add(flow, datagram)) this.#counters.datagramsDropped.backpressure++;
    });
    socket.connect(this.#target.port, this.#target.address, () => {
      const waiting = entry.connecting ?? [];
      entry.connecting = undefined;
      for (const datagram of waiting) socket.send(datagram);
    });
    return entry;
  }

  /** A flow that cannot go on here: counted, reported, and ended towards the relay. */
  #fail(flow: number, error: Error): void {
    this.#counters.flowFailures++;
    this.#onTargetError(error);
    this.#close(flow);
    this.#writer.end(flow);
  }

  #close(flow: number): void {
    const entry = this.#socketByFlow.get(flow);
    if (entry === undefined) return;
    this.#socketByFlow.delete(flow);
    this.#counters.flowsOpen--;
    try {
      entry.socket.close();
    } catch {
      // A socket whose bind failed has nothing left to close.
    }
  }
}
