import { describe, expect, it } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import {
  CONTROL_MAX_BYTES,
  DATAGRAM_LENGTH_BYTES,
  DatagramBatch,
  FLOW_WRITE_LIMIT_BYTES,
  DatagramReader,
  MAX_DATAGRAM_BYTES,
  decodeControl,
  encodeControl,
  frameDatagrams,
  parseControlFeatures,
} from '@pool/shared/internal';
import { envNameOf, parseCommandLine } from '@pool/shared/cli';

describe('control messages', () => {
  it('round-trips a connect order', () => {
    const text = encodeControl({ v: 1, type: 'connect', id: 'a1b2c3d4' });
    expect(JSON.parse(text)).toEqual({ v: 1, type: 'connect', id: 'a1b2c3d4' });
    expect(decodeControl(text)).toEqual({ v: 1, type: 'connect', id: 'a1b2c3d4' });
  });

  it('round-trips a claim acknowledgement and a demand', () => {
    expect(decodeControl(encodeControl({ v: 1, type: 'claimed', id: '0badc0de' }))).toEqual({ v: 1, type: 'claimed', id: '0badc0de' });
    expect(decodeControl(encodeControl({ v: 1, type: 'demand', waiting: 1_000 }))).toEqual({ v: 1, type: 'demand', waiting: 1_000 });
    expect(decodeControl('{"v":1,"type":"demand","waiting":0}')).toEqual({ v: 1, type: 'demand', waiting: 0 });
  });

  it('round-trips a UDP flow order', () => {
    const flow = { v: 1, type: 'flow', id: 'a1b2c3d4', service: 'dns', source: { address: '203.0.113.9', port: 5353 }, maxDatagram: 1_400 } as const;
    expect(decodeControl(encodeControl(flow))).toEqual(flow);
    expect(decodeControl('{"v":1,"type":"flow","id":"a1b2c3d4","maxDatagram":65507}')).toEqual({ v: 1, type: 'flow', id: 'a1b2c3d4', maxDatagram: 65_507 });
  });

  it('reads the features an agent lists, ignoring unknown ones', () => {
    expect([...parseControlFeatures('claimed, demand,teleport')]).toEqual(['claimed', 'demand']);
    expect([...parseControlFeatures(['demand'])]).toEqual(['demand']);
    expect(parseControlFeatures(undefined).size).toBe(0);
  });

  it('ignores unknown extra fields (forward compatible within a version)', () => {
    expect(decodeControl('{"v":1,"type":"connect","id":"a1b2c3d4","hint":"x"}')).toEqual({ v: 1, type: 'connect', id: 'a1b2c3d4' });
  });

  it.each([
    ['not JSON', '{"v":1,'],
    ['JSON null', 'null'],
    ['an array', '[1]'],
    ['a string', '"connect"'],
    ['another version', '{"v":2,"type":"connect","id":"a1b2c3d4"}'],
    ['no version', '{"type":"connect","id":"a1b2c3d4"}'],
    ['an unknown type', '{"v":1,"type":"shutdown"}'],
    ['a bad id', '{"v":1,"type":"connect","id":"A1B2C3D4"}'],
    ['a missing id', '{"v":1,"type":"connect"}'],
    ['a numeric id', '{"v":1,"type":"connect","id":12345678}'],
    ['a claim without an id', '{"v":1,"type":"claimed"}'],
    ['a negative demand', '{"v":1,"type":"demand","waiting":-1}'],
    ['a fractional demand', '{"v":1,"type":"demand","waiting":1.5}'],
    ['a huge demand', '{"v":1,"type":"demand","waiting":1e12}'],
    ['a demand as text', '{"v":1,"type":"demand","waiting":"9"}'],
    ['a flow without its maximum', '{"v":1,"type":"flow","id":"a1b2c3d4"}'],
    ['a flow over the UDP maximum', '{"v":1,"type":"flow","id":"a1b2c3d4","maxDatagram":65508}'],
    ['a flow with a malformed source', '{"v":1,"type":"flow","id":"a1b2c3d4","maxDatagram":9,"source":{"address":"x","port":1}}'],
    ['a flow without an id', '{"v":1,"type":"flow","maxDatagram":9}'],
    ['an oversized message', `{"v":1,"type":"connect","id":"a1b2c3d4","pad":"${'x'.repeat(CONTROL_MAX_BYTES)}"}`],
  ])('rejects %s with ERR_CONTROL_MESSAGE', (_label, text) => {
    expect(() => decodeControl(text)).toThrow(expect.objectContaining({ code: 'ERR_CONTROL_MESSAGE' }));
  });
});

describe('datagram framing', () => {
  it('frames each datagram with its length, and cuts a stream split anywhere back into the same datagrams', () => {
    const datagrams = [Buffer.alloc(0), Buffer.from([7]), randomBytes(1_400), randomBytes(300), randomBytes(MAX_DATAGRAM_BYTES)];
    const stream = frameDatagrams(datagrams);
    expect(stream.length).toBe(datagrams.reduce((sum, d) => sum + DATAGRAM_LENGTH_BYTES + d.length, 0));
    for (const cut of [1, 2, 3, 1_000, 65_536, stream.length]) {
      const reader = new DatagramReader(MAX_DATAGRAM_BYTES);
      const out: Buffer[] = [];
      for (let at = 0; at < stream.length; at += cut) out.push(...reader.push(stream.subarray(at, at + cut)));
      expect(out.map((d) => d.toString('hex'))).toEqual(datagrams.map((d) => d.toString('hex')));
    }
  });

  it('writes the datagrams of one turn of the event loop together, a lone one at the end of the turn, and 64 KiB at once', async () => {
    const writes: Buffer[] = [];
    const batch = new DatagramBatch({ write: (frames: Buffer) => writes.push(frames), writableLength: 0 });
    batch.add(Buffer.from('a'));
    batch.add(Buffer.from('bc'));
    expect(writes).toHaveLength(0);
    expect(batch.pendingBytes).toBe(2 * DATAGRAM_LENGTH_BYTES + 3);
    await new Promise((resolve) => setImmediate(resolve));
    expect(writes).toHaveLength(1);
    expect(new DatagramReader(10).push(writes[0]!).map(String)).toEqual(['a', 'bc']);
    batch.add(randomBytes(40_000));
    batch.add(randomBytes(40_000));
    expect(writes).toHaveLength(2);
    expect(batch.pendingBytes).toBe(0);
    batch.add(Buffer.from('gone'));
    batch.discard();
    await new Promise((resolve) => setImmediate(resolve));
    expect(writes).toHaveLength(2);
  });

  it('takes no datagram once the flow has FLOW_WRITE_LIMIT_BYTES waiting, written or not', () => {
    const sink = { write: (): void => {}, writableLength: FLOW_WRITE_LIMIT_BYTES - 1_000 };
    const batch = new DatagramBatch(sink);
    expect(batch.add(Buffer.alloc(998))).toBe(true);
    // 1,000 framed bytes pending on top of the sink's: at the limit, not over it.
    expect(batch.add(Buffer.alloc(10))).toBe(true);
    expect(batch.add(Buffer.alloc(10))).toBe(false);
    expect(batch.pendingBytes).toBe(1_000 + 12);
    batch.discard();
    sink.writableLength = 0;
    expect(batch.add(Buffer.alloc(10))).toBe(true);
    batch.discard();
  });

  it('refuses a framed datagram over the flow maximum with ERR_PROTOCOL, before its bytes arrive', () => {
    const reader = new DatagramReader(1_400);
    expect(reader.push(frameDatagrams([Buffer.alloc(1_400)]))).toHaveLength(1);
    expect(() => reader.push(Buffer.from([0x05, 0x79]))).toThrow(expect.objectContaining({ code: 'ERR_PROTOCOL' }));
  });
});

describe('command-line flags', () => {
  const flags = {
    port: { type: 'string' as const, description: 'port', default: '10101' },
    'tls-cert': { type: 'string' as const, description: 'cert' },
    plain: { type: 'boolean' as const, description: 'plain' },
  };

  it('takes flags over env vars over defaults', () => {
    expect(envNameOf('tls-cert')).toBe('POOL_TLS_CERT');
    expect(parseCommandLine('x', '', flags, [], {})).toEqual({ port: '10101', 'tls-cert': undefined, plain: undefined });
    expect(parseCommandLine('x', '', flags, [], { POOL_PORT: '1', POOL_PLAIN: 'true' })).toMatchObject({ port: '1', plain: true });
    expect(parseCommandLine('x', '', flags, ['--port', '2'], { POOL_PORT: '1' })).toMatchObject({ port: '2' });
  });

  it('refuses an unknown flag', () => {
    expect(() => parseCommandLine('x', '', flags, ['--prot', '1'], {})).toThrow(/Unknown option '--prot'/);
  });
});
