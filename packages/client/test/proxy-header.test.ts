import { describe, expect, it } from '@jest/globals';
import { V1ProxyProtocol, V2ProxyProtocol } from 'proxy-protocol-js';
import { proxyHeader } from '../src/proxy-header.js';

// Our writer against an independent parser (proxy-protocol-js).

/** The source address and port a v2 header carries, as text. */
function v2Source(header: Buffer): { address: string; port: number } {
  const { sourceAddress, sourcePort } = V2ProxyProtocol.parse(header).proxyAddress as unknown as { sourceAddress: { address: number[] }; sourcePort: number };
  const bytes = sourceAddress.address;
  const address = bytes.length === 4 ? bytes.join('.') : Array.from({ length: 8 }, (_, i) => ((bytes[2 * i]! << 8) | bytes[2 * i + 1]!).toString(16)).join(':');
  return { address, port: sourcePort };
}

describe('proxyHeader', () => {
  it.each([
    ['IPv4', { address: '192.0.2.7', port: 50_123 }, { address: '203.0.113.10', port: 443 }, 'PROXY TCP4 192.0.2.7 203.0.113.10 50123 443\r\n'],
    ['IPv6', { address: '2001:db8::7', port: 50_123 }, { address: '2001:db8::1', port: 443 }, 'PROXY TCP6 2001:db8::7 2001:db8::1 50123 443\r\n'],
    ['IPv4-mapped IPv6 (a dual-stack listener)', { address: '::ffff:192.0.2.7', port: 1 }, { address: '::ffff:203.0.113.10', port: 2 }, 'PROXY TCP4 192.0.2.7 203.0.113.10 1 2\r\n'],
  ])('v1, %s: the text an independent parser reads back', (_label, source, destination, text) => {
    const header = proxyHeader('v1', source, destination);
    expect(header.toString('latin1')).toBe(text);
    const parsed = V1ProxyProtocol.parse(header.toString('latin1'));
    expect(parsed.source.port).toBe(source.port);
    expect(parsed.destination.port).toBe(destination.port);
  });

  it.each([
    ['IPv4', { address: '192.0.2.7', port: 50_123 }, { address: '203.0.113.10', port: 443 }, '192.0.2.7', 28],
    ['IPv6', { address: '2001:db8::7', port: 50_123 }, { address: '2001:db8::1', port: 443 }, '2001:db8:0:0:0:0:0:7', 52],
    ['IPv6 loopback', { address: '::1', port: 9 }, { address: '::1', port: 10 }, '0:0:0:0:0:0:0:1', 52],
    ['mixed families (IPv4 mapped into IPv6)', { address: '192.0.2.7', port: 9 }, { address: '2001:db8::1', port: 10 }, '0:0:0:0:0:ffff:c000:207', 52],
  ])('v2, %s: the binary header an independent parser reads back', (_label, source, destination, address, length) => {
    const header = proxyHeader('v2', source, destination);
    expect(header.length).toBe(length);
    expect(v2Source(header)).toEqual({ address, port: source.port });
  });

  it('refuses what is not an IP address', () => {
    expect(() => proxyHeader('v1', { address: 'example.com', port: 1 }, { address: '::1', port: 2 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_OPTION' }));
  });
});
