import { ProtocolError } from '../core/errors.js';

/**
 * UDP over a pooled connection. One connection (a *carrier*) carries many
 * flows of one service; each datagram travels as a frame: a 2-byte big-endian
 * length, a 4-byte big-endian flow number, then its bytes, so boundaries and
 * owners survive the byte stream. A datagram is never split or merged; one
 * over the service's maximum is dropped by whoever would send it.
 */
export const DATAGRAM_HEADER_BYTES = 6;

/** The largest UDP payload over IPv4, and so the most a service may allow. */
export const MAX_DATAGRAM_BYTES = 65_507;

/**
 * The length no datagram has: a frame with it carries no bytes and ends its
 * flow (the sender has closed the flow's socket or forgotten its user).
 */
export const FLOW_END_LENGTH = 0xffff;

/** Flow numbers are 32 bits, chosen by the relay. */
export const MAX_FLOW_NUMBER = 0xffff_ffff;

/** One frame on a carrier: a datagram of `flow`, or (`datagram` undefined) the end of that flow. */
export interface FlowFrame {
  flow: number;
  datagram: Uint8Array | undefined;
}

function frameBytes(frame: FlowFrame): number {
  return DATAGRAM_HEADER_BYTES + (frame.datagram?.length ?? 0);
}

/** The frames, each its header and then its bytes, in one buffer (one write). */
export function frameDatagrams(frames: readonly FlowFrame[]): Buffer {
  let bytes = 0;
  for (const frame of frames) bytes += frameBytes(frame);
  const out = Buffer.allocUnsafe(bytes);
  let at = 0;
  for (const { flow, datagram } of frames) {
    out.writeUInt16BE(datagram === undefined ? FLOW_END_LENGTH : datagram.length, at);
    out.writeUInt32BE(flow, at + 2);
    if (datagram !== undefined) out.set(datagram, at + DATAGRAM_HEADER_BYTES);
    at += DATAGRAM_HEADER_BYTES + (datagram?.length ?? 0);
  }
  return out;
}

/** A frame as read: the datagram is a view of what arrived. */
export interface ReadFrame {
  flow: number;
  datagram: Buffer | undefined;
}

/**
 * Cuts a carrier's byte stream back into frames. Chunks may end anywhere,
 * inside a header too; a length over `maxBytes` (other than the flow-end
 * mark) is the peer breaking the protocol (it must drop such a datagram, not
 * send it) and throws `ERR_PROTOCOL`.
 */
export class DatagramReader {
  readonly #maxBytes: number;
  /** Bytes received and not yet part of a whole frame. */
  #pending: Buffer = Buffer.alloc(0);

  constructor(maxBytes: number) {
    this.#maxBytes = maxBytes;
  }

  /** The whole frames `chunk` completes, in order. */
  push(chunk: Buffer): ReadFrame[] {
    let data = this.#pending.length === 0 ? chunk : Buffer.concat([this.#pending, chunk]);
    const frames: ReadFrame[] = [];
    while (data.length >= DATAGRAM_HEADER_BYTES) {
      const length = data.readUInt16BE(0);
      const flow = data.readUInt32BE(2);
      if (length === FLOW_END_LENGTH) {
        frames.push({ flow, datagram: undefined });
        data = data.subarray(DATAGRAM_HEADER_BYTES);
        continue;
      }
      if (length > this.#maxBytes) throw new ProtocolError(`a framed datagram of ${length} bytes, over the service's maximum of ${this.#maxBytes}`);
      const end = DATAGRAM_HEADER_BYTES + length;
      if (data.length < end) break;
      frames.push({ flow, datagram: data.subarray(DATAGRAM_HEADER_BYTES, end) });
      data = data.subarray(end);
    }
    // A copy, so that a small remainder does not pin a large chunk.
    this.#pending = data.length === 0 ? Buffer.alloc(0) : Buffer.from(data);
    return frames;
  }
}

/** What {@link readDatagrams} reads: a carrier. */
export interface FrameSource {
  on(event: 'data', listener: (chunk: Buffer) => void): unknown;
  destroy(): unknown;
}

/**
 * Reads the frames that arrive on a carrier into `onFrames`, chunk by chunk.
 * A framing error is the peer breaking the protocol: it is reported and the
 * connection destroyed.
 */
export function readDatagrams(conn: FrameSource, maxBytes: number, onFrames: (frames: ReadFrame[]) => void, onError: (error: Error) => void): void {
  const reader = new DatagramReader(maxBytes);
  conn.on('data', (chunk: Buffer) => {
    let frames: ReadFrame[];
    try {
      frames = reader.push(chunk);
    } catch (error) {
      onError(error as Error);
      conn.destroy();
      return;
    }
    onFrames(frames);
  });
}

/** Bytes of frames one write carries at most. */
const BATCH_MAX_BYTES = 64 * 1024;
/**
 * Framed bytes one flow may have waiting for its carrier; past this its
 * datagrams are dropped, as UDP would drop them, and the carrier's other
 * flows keep their turns.
 */
export const FLOW_QUEUE_LIMIT_BYTES = 64 * 1024;
/** Frames taken from a queue's front before the array is cut, so a flow that never empties holds no taken ones. */
const COMPACT_AFTER_FRAMES = 512;
/** Framed bytes all the flows of one carrier may have waiting, so that many busy flows cannot pile up memory. */
export const CARRIER_QUEUE_LIMIT_BYTES = 1024 * 1024;

/** Where a {@link FlowWriter} writes: a carrier. */
export interface DatagramSink {
  write(frames: Buffer): boolean;
  once(event: 'drain', listener: () => void): unknown;
  removeListener(event: 'drain', listener: () => void): unknown;
}

/** The frames of one flow waiting for the carrier, oldest first from `head`. */
interface FlowQueue {
  frames: FlowFrame[];
  head: number;
  bytes: number;
}

/**
 * Writes the frames of a carrier's flows, taking turns: each write takes one
 * frame from every flow that has one, round after round, up to 64 KiB, so a
 * flow that floods fills only its own queue and a quiet flow's datagram waits
 * for at most one turn. Frames of the current turn of the event loop go
 * together (under load one WebSocket message carries many: one frame header,
 * one mask, one syscall), and nothing more is written while the carrier is
 * backed up.
 */
export class FlowWriter {
  readonly #sink: DatagramSink;
  /** Flows with frames waiting, in the order they take turns. */
  readonly #queueByFlow = new Map<number, FlowQueue>();
  #bytes = 0;
  #scheduled: NodeJS.Immediate | undefined;
  #awaitingDrain = false;

  constructor(sink: DatagramSink) {
    this.#sink = sink;
  }

  /** Framed bytes waiting, not yet written. */
  get pendingBytes(): number {
    return this.#bytes;
  }

  /**
   * Queues `datagram` of `flow`, framed (copied) when it is written: until
   * then it must not change. False, and nothing queued, when the flow or the
   * carrier already has its limit waiting (the caller counts the drop).
   */
  add(flow: number, datagram: Uint8Array): boolean {
    const bytes = DATAGRAM_HEADER_BYTES + datagram.length;
    const queue = this.#queueByFlow.get(flow);
    if ((queue?.bytes ?? 0) + bytes > FLOW_QUEUE_LIMIT_BYTES || this.#bytes + bytes > CARRIER_QUEUE_LIMIT_BYTES) return false;
    this.#enqueue(flow, { flow, datagram }, queue);
    return true;
  }

  /** Queues the end of `flow`, after its datagrams; never refused (it is 6 bytes, once per flow). */
  end(flow: number): void {
    this.#enqueue(flow, { flow, datagram: undefined }, this.#queueByFlow.get(flow));
  }

  #enqueue(flow: number, frame: FlowFrame, queue: FlowQueue | undefined): void {
    const bytes = frameBytes(frame);
    if (queue === undefined) this.#queueByFlow.set(flow, { frames: [frame], head: 0, bytes });
    else {
      queue.frames.push(frame);
      queue.bytes += bytes;
    }
    this.#bytes += bytes;
    if (this.#awaitingDrain) return;
    if (this.#bytes >= BATCH_MAX_BYTES) this.flush();
    else this.#scheduled ??= setImmediate(this.flush);
  }

  /** Writes one batch now (unless the carrier is backed up), and schedules the next if frames remain. */
  readonly flush = (): void => {
    if (this.#scheduled !== undefined) clearImmediate(this.#scheduled);
    this.#scheduled = undefined;
    if (this.#awaitingDrain || this.#bytes === 0) return;
    const batch: FlowFrame[] = [];
    let batchBytes = 0;
    while (batchBytes < BATCH_MAX_BYTES && this.#queueByFlow.size > 0) {
      for (const [flow, queue] of this.#queueByFlow) {
        const frame = queue.frames[queue.head++]!;
        const bytes = frameBytes(frame);
        queue.bytes -= bytes;
        batchBytes += bytes;
        batch.push(frame);
        if (queue.head === queue.frames.length) this.#queueByFlow.delete(flow);
        else if (queue.head >= COMPACT_AFTER_FRAMES) {
          queue.frames = queue.frames.slice(queue.head);
          queue.head = 0;
        }
        if (batchBytes >= BATCH_MAX_BYTES) break;
      }
    }
    this.#bytes -= batchBytes;
    if (!this.#sink.write(frameDatagrams(batch))) {
      this.#awaitingDrain = true;
      this.#sink.once('drain', this.#onDrain);
    } else if (this.#bytes > 0) this.#scheduled = setImmediate(this.flush);
  };

  readonly #onDrain = (): void => {
    this.#awaitingDrain = false;
    this.flush();
  };

  /** Drops what is waiting, for a carrier that is gone. */
  discard(): void {
    if (this.#scheduled !== undefined) clearImmediate(this.#scheduled);
    this.#scheduled = undefined;
    this.#sink.removeListener('drain', this.#onDrain);
    this.#awaitingDrain = false;
    this.#queueByFlow.clear();
    this.#bytes = 0;
  }
}
