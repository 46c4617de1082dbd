import { describe, expect, it } from '@jest/globals';
import {
  CONTROL_MAX_BYTES,
  decodeControl,
  encodeControl,
  parseControlFeatures,
} from '@pool/shared/internal';
import { envNameOf, parseCommandLine, wasGiven } from '@pool/shared/cli';

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

  it('round-trips a UDP carrier order', () => {
    const flow = { v: 1, type: 'flow', id: 'a1b2c3d4', service: 'dns', maxDatagram: 1_400 } as const;
    expect(decodeControl(encodeControl(flow))).toEqual(flow);
    expect(decodeControl('{"v":1,"type":"flow","id":"a1b2c3d4","maxDatagram":65507}')).toEqual({ v: 1, type: 'flow', id: 'a1b2c3d4', maxDatagram: 65_507 });
  });

  it('reads the features an agent lists, ignoring unknown ones', () => {
    expect([...parseControlFeatures('claimed, demand,teleport')]).toEqual(['claimed', 'demand']);
    // `udp` was one flow per connection: a relay that carries many on one must not take it for `flows`.
    expect([...parseControlFeatures('udp,flows')]).toEqual(['flows']);
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
    ['a flow without an id', '{"v":1,"type":"flow","maxDatagram":9}'],
    ['an oversized message', `{"v":1,"type":"connect","id":"a1b2c3d4","pad":"${'x'.repeat(CONTROL_MAX_BYTES)}"}`],
  ])('rejects %s with ERR_CONTROL_MESSAGE', (_label, text) => {
    expect(() => decodeControl(text)).toThrow(expect.objectContaining({ code: 'ERR_CONTROL_MESSAGE' }));
  });
});

describe('command-line flags', () => {
  const flags = {
    port: { type: 'string' as const, description: 'port', default: '10101' },
    'tls-cert': { type: 'string' as const, description: 'cert' },
    plain: { type: 'boolean' as const, description: 'plain' },
  };

  it('reads a repeatable flag from its env var as a comma-separated list, spaces around entries ignored', () => {
    const servers = { server: { type: 'string' as const, description: 'relay', multiple: true } };
    expect(parseCommandLine('x', '', servers, [], { POOL_SERVER: 'a:1, b:2,' })).toEqual({ server: ['a:1', 'b:2'] });
    expect(parseCommandLine('x', '', servers, ['--server', 'c:3', '--server', 'd:4'], { POOL_SERVER: 'a:1' })).toEqual({ server: ['c:3', 'd:4'] });
  });

  it('tells a value the user gave (flag or env var) from a default', () => {
    const values = parseCommandLine('x', '', flags, ['--tls-cert', 'a.crt'], { POOL_PLAIN: '1' })!;
    expect(['port', 'tls-cert', 'plain'].map((name) => wasGiven(values, name))).toEqual([false, true, true]);
  });

  it('refuses a flag that takes one value given twice, and a flag without the one it requires', () => {
    expect(() => parseCommandLine('x', '', flags, ['--port', '1', '--port=2'], {})).toThrow('--port is given more than once; it takes one value');
    const withUdp = { ...flags, udp: { type: 'boolean' as const, description: 'udp' }, 'udp-max-flows': { type: 'string' as const, description: 'flows', default: '9', requires: 'udp' } };
    expect(() => parseCommandLine('x', '', withUdp, ['--udp-max-flows', '3'], {})).toThrow('--udp-max-flows only applies with --udp');
    expect(() => parseCommandLine('x', '', withUdp, [], { POOL_UDP_MAX_FLOWS: '3' })).toThrow('--udp-max-flows only applies with --udp');
    expect(parseCommandLine('x', '', withUdp, ['--udp', '--udp-max-flows', '3'], {})).toMatchObject({ udp: true, 'udp-max-flows': '3' });
    // Its default alone is no mistake.
    expect(parseCommandLine('x', '', withUdp, [], {})).toMatchObject({ 'udp-max-flows': '9' });
  });

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
