import { describe, expect, it } from '@jest/globals';
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import {
  CARRIER_QUEUE_LIMIT_BYTES,
  DATAGRAM_HEADER_BYTES,
  DatagramReader,
  FLOW_QUEUE_LIMIT_BYTES,
  FlowWriter,
  MAX_DATAGRAM_BYTES,
  MAX_FLOW_NUMBER,
  frameDatagrams,
  type FlowFrame,
  type ReadFrame,
} from '@pool/shared/internal';

/** A carrier that keeps what is written, and says it is backed up while `full`. */
class Sink extends EventEmitter {
  readonly writes: Buffer[] = [];
  full = false;

  write(frames: Buffer): boolean {
    this.writes.push(frames);
    return !this.full;
  }

  /** Every frame written so far, read back. */
  frames(maxBytes = MAX_DATAGRAM_BYTES): ReadFrame[] {
    const reader = new DatagramReader(maxBytes);
    return this.writes.flatMap((chunk) => reader.push(chunk));
  }
}

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
const shown = (frames: readonly ReadFrame[]): string[] => frames.map(({ flow, datagram }) => `${flow}:${datagram === undefined ? 'end' : datagram.toString('hex')}`);

describe('datagram framing', () => {
  it('frames each datagram with its length and flow number, ends a flow with the end mark, and cuts a stream split anywhere back into the same frames', () => {
    const frames: FlowFrame[] = [
      { flow: 1, datagram: Buffer.alloc(0) },
      { flow: MAX_FLOW_NUMBER, datagram: Buffer.from([7]) },
      { flow: 1, datagram: undefined },
      { flow: 2, datagram: randomBytes(1_400) },
      { flow: 3, datagram: randomBytes(MAX_DATAGRAM_BYTES) },
    ];
    const stream = frameDatagrams(frames);
    expect(stream.length).toBe(frames.reduce((sum, frame) => sum + DATAGRAM_HEADER_BYTES + (frame.datagram?.length ?? 0), 0));
    const expected = shown(frames.map(({ flow, datagram }) => ({ flow, datagram: datagram && Buffer.from(datagram) })));
    for (const cut of [1, 2, 5, 7, 1_000, 65_536, stream.length]) {
      const reader = new DatagramReader(MAX_DATAGRAM_BYTES);
      const out: ReadFrame[] = [];
      for (let at = 0; at < stream.length; at += cut) out.push(...reader.push(stream.subarray(at, at + cut)));
      expect(shown(out)).toEqual(expected);
    }
  });

  it('refuses a framed datagram over the maximum with ERR_PROTOCOL, before its bytes arrive; the end mark is not a length', () => {
    const reader = new DatagramReader(1_400);
    expect(reader.push(frameDatagrams([{ flow: 9, datagram: Buffer.alloc(1_400) }, { flow: 9, datagram: undefined }]))).toHaveLength(2);
    expect(() => reader.push(Buffer.from([0x05, 0x79, 0, 0, 0, 9]))).toThrow(expect.objectContaining({ code: 'ERR_PROTOCOL' }));
  });
});

describe('FlowWriter', () => {
  it('writes the frames of one turn of the event loop together, a lone one at the end of the turn, and 64 KiB at once', async () => {
    const sink = new Sink();
    const writer = new FlowWriter(sink);
    writer.add(1, Buffer.from('a'));
    writer.add(2, Buffer.from('bc'));
    writer.end(1);
    expect(sink.writes).toHaveLength(0);
    expect(writer.pendingBytes).toBe(3 * DATAGRAM_HEADER_BYTES + 3);
    await turn();
    expect(sink.writes).toHaveLength(1);
    expect(shown(sink.frames())).toEqual(['1:61', '2:6263', '1:end']);
    writer.add(3, randomBytes(40_000));
    writer.add(4, randomBytes(40_000));
    expect(sink.writes).toHaveLength(2);
    writer.add(5, Buffer.from('gone'));
    writer.discard();
    await turn();
    await turn();
    expect(sink.frames().map((frame) => frame.flow)).toEqual([1, 2, 1, 3, 4]);
    expect(writer.pendingBytes).toBe(0);
  });

  it('lets flows take turns: a quiet flow is written in the first batch although a busy one queued first', async () => {
    const sink = new Sink();
    const writer = new FlowWriter(sink);
    sink.full = true;
    // The carrier is backed up: everything waits in the flows' queues.
    writer.add(1, Buffer.alloc(1));
    await turn();
    expect(sink.writes).toHaveLength(1);
    for (let i = 0; i < 60; i++) expect(writer.add(1, Buffer.alloc(1_000, 1))).toBe(true);
    expect(writer.add(2, Buffer.from('quiet'))).toBe(true);
    sink.full = false;
    sink.emit('drain');
    expect(sink.writes).toHaveLength(2);
    // One frame of each flow per round: the quiet flow's comes second, not after 60 KiB.
    expect(sink.frames().slice(1, 4).map((frame) => frame.flow)).toEqual([1, 2, 1]);
    await turn();
    expect(sink.frames().filter((frame) => frame.flow === 1)).toHaveLength(61);
  });

  it('writes nothing while the carrier is backed up, and goes on when it drains', async () => {
    const sink = new Sink();
    const writer = new FlowWriter(sink);
    sink.full = true;
    writer.add(1, Buffer.from('x'));
    await turn();
    expect(sink.writes).toHaveLength(1);
    writer.add(1, Buffer.from('y'));
    await turn();
    expect(sink.writes).toHaveLength(1);
    expect(writer.pendingBytes).toBe(DATAGRAM_HEADER_BYTES + 1);
    sink.full = false;
    sink.emit('drain');
    expect(shown(sink.frames())).toEqual(['1:78', '1:79']);
  });

  it('takes no datagram of a flow that has FLOW_QUEUE_LIMIT_BYTES waiting, while other flows still queue, up to the carrier limit', () => {
    const sink = new Sink();
    sink.full = true;
    const writer = new FlowWriter(sink);
    writer.add(0, Buffer.alloc(1));
    const datagram = Buffer.alloc(1_000 - DATAGRAM_HEADER_BYTES);
    const perFlow = Math.floor(FLOW_QUEUE_LIMIT_BYTES / 1_000);
    for (let i = 0; i < perFlow; i++) expect(writer.add(1, datagram)).toBe(true);
    expect(writer.add(1, datagram)).toBe(false);
    expect(writer.add(2, datagram)).toBe(true);
    // More flows, each to its own limit, until the carrier's refuses a fresh flow too.
    for (let flow = 3; writer.add(flow, datagram) || writer.add(++flow, datagram); );
    expect(writer.pendingBytes).toBeGreaterThan(CARRIER_QUEUE_LIMIT_BYTES - 1_000);
    expect(writer.pendingBytes).toBeLessThanOrEqual(CARRIER_QUEUE_LIMIT_BYTES);
    // The end of a flow is never refused: it is what frees the other side's socket.
    writer.end(1);
    expect(writer.pendingBytes).toBeGreaterThan(CARRIER_QUEUE_LIMIT_BYTES - 1_000 + DATAGRAM_HEADER_BYTES);
    writer.discard();
    expect(writer.pendingBytes).toBe(0);
  });
});
