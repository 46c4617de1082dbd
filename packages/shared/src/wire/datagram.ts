import type { Duplex } from 'node:stream';
import { ProtocolError } from '../core/errors.js';

/**
 * UDP over a pooled connection: each datagram travels as a 2-byte big-endian
 * length and then its bytes, so boundaries survive the byte stream. A
 * datagram is never split or merged; one over the flow's maximum is dropped
 * by whoever would send it.
 */
export const DATAGRAM_LENGTH_BYTES = 2;

/** The largest UDP payload over IPv4, and so the most a flow may allow. */
export const MAX_DATAGRAM_BYTES = 65_507;

/** The datagrams framed for the pooled connection, each its length and then its bytes, in one buffer (one write). */
export function frameDatagrams(datagrams: readonly Uint8Array[]): Buffer {
  let bytes = 0;
  for (const datagram of datagrams) bytes += DATAGRAM_LENGTH_BYTES + datagram.length;
  const frames = Buffer.allocUnsafe(bytes);
  let at = 0;
  for (const datagram of datagrams) {
    frames.writeUInt16BE(datagram.length, at);
    frames.set(datagram, at + DATAGRAM_LENGTH_BYTES);
    at += DATAGRAM_LENGTH_BYTES + datagram.length;
  }
  return frames;
}

/**
 * Cuts a pooled connection's byte stream back into datagrams. Chunks may end
 * anywhere, inside the length too; a length over `maxBytes` is the peer
 * breaking the protocol (it must drop such a datagram, not send it) and
 * throws `ERR_PROTOCOL`.
 */
export class DatagramReader {
  readonly #maxBytes: number;
  /** Bytes received and not yet part of a whole datagram. */
  #pending: Buffer = Buffer.alloc(0);

  constructor(maxBytes: number) {
    this.#maxBytes = maxBytes;
  }

  /** The whole datagrams `chunk` completes, in order. */
  push(chunk: Buffer): Buffer[] {
    let data = this.#pending.length === 0 ? chunk : Buffer.concat([this.#pending, chunk]);
    const datagrams: Buffer[] = [];
    while (data.length >= DATAGRAM_LENGTH_BYTES) {
      const length = data.readUInt16BE(0);
      if (length > this.#maxBytes) throw new ProtocolError(`a framed datagram of ${length} bytes, over the flow's maximum of ${this.#maxBytes}`);
      const end = DATAGRAM_LENGTH_BYTES + length;
      if (data.length < end) break;
      datagrams.push(data.subarray(DATAGRAM_LENGTH_BYTES, end));
      data = data.subarray(end);
    }
    // A copy, so that a small remainder does not pin a large chunk.
    this.#pending = data.length === 0 ? Buffer.alloc(0) : Buffer.from(data);
    return datagrams;
  }
}

/**
 * Reads the datagrams that arrive on a flow's pooled connection into
 * `onDatagrams`, chunk by chunk. A framing error is the peer breaking the
 * protocol: it is reported and the connection destroyed.
 */
export function readDatagrams(conn: Duplex, maxBytes: number, onDatagrams: (datagrams: Buffer[]) => void, onError: (error: Error) => void): void {
  const reader = new DatagramReader(maxBytes);
  conn.on('data', (chunk: Buffer) => {
    let datagrams: Buffer[];
    try {
      datagrams = reader.push(chunk);
    } catch (error) {
      onError(error as Error);
      conn.destroy();
      return;
    }
    onDatagrams(datagrams);
  });
}

/** Bytes of framed datagrams one write carries at most: a batch this large is written at once. */
const BATCH_MAX_BYTES = 64 * 1024;
/**
 * Bytes a flow may have waiting for its pooled connection, written or not;
 * past this its datagrams are dropped, as UDP would drop them, and no other
 * flow waits behind it (each flow has its own connection).
 */
export const FLOW_WRITE_LIMIT_BYTES = 256 * 1024;

/** Where a batch writes: a flow's pooled connection. */
export interface DatagramSink {
  write(frames: Buffer): unknown;
  readonly writableLength: number;
}

/**
 * Collects the datagrams framed for one connection during a turn of the event
 * loop and writes them together: under load one WebSocket message then
 * carries many datagrams (one frame header, one mask, one syscall), while a
 * lone datagram waits for nothing but the end of the current turn.
 */
export class DatagramBatch {
  readonly #sink: DatagramSink;
  #datagrams: Uint8Array[] = [];
  #bytes = 0;
  #scheduled: NodeJS.Immediate | undefined;

  constructor(sink: DatagramSink) {
    this.#sink = sink;
  }

  /** Framed bytes not yet written. */
  get pendingBytes(): number {
    return this.#bytes;
  }

  /**
   * Queues `datagram`, which is framed (copied) when the batch is written:
   * until then it must not change. False, and nothing queued, when the flow
   * already has `FLOW_WRITE_LIMIT_BYTES` waiting (the caller counts the drop).
   */
  add(datagram: Uint8Array): boolean {
    if (this.#sink.writableLength + this.#bytes > FLOW_WRITE_LIMIT_BYTES) return false;
    this.#datagrams.push(datagram);
    this.#bytes += DATAGRAM_LENGTH_BYTES + datagram.length;
    if (this.#bytes >= BATCH_MAX_BYTES) this.flush();
    else this.#scheduled ??= setImmediate(this.flush);
    return true;
  }

  readonly flush = (): void => {
    if (this.#scheduled !== undefined) clearImmediate(this.#scheduled);
    this.#scheduled = undefined;
    if (this.#datagrams.length === 0) return;
    const frames = frameDatagrams(this.#datagrams);
    this.#datagrams = [];
    this.#bytes = 0;
    this.#sink.write(frames);
  };

  /** Drops what is pending, for a connection that is gone. */
  discard(): void {
    if (this.#scheduled !== undefined) clearImmediate(this.#scheduled);
    this.#scheduled = undefined;
    this.#datagrams = [];
    this.#bytes = 0;
  }
}
