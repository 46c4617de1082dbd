import { isIPv4, isIPv6 } from 'node:net';
import { InvalidOptionError, type Endpoint } from '@pool/shared/internal';

/** The 12-byte signature that opens every PROXY protocol v2 header. */
const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

/** `::ffff:192.0.2.1` → `192.0.2.1`; anything else as it is. */
function unmapped(address: string): string {
  const match = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return match ? match[1]! : address;
}

/** Both endpoints in one family: IPv4 when both are, else IPv6 (an IPv4 address mapped into it). */
function sameFamily(source: Endpoint, destination: Endpoint): { family: 4 | 6; source: string; destination: string } {
  const [from, to] = [unmapped(source.address), unmapped(destination.address)];
  if (isIPv4(from) && isIPv4(to)) return { family: 4, source: from, destination: to };
  const asV6 = (address: string): string => (isIPv4(address) ? `::ffff:${address}` : address);
  if (!isIPv6(asV6(from)) || !isIPv6(asV6(to))) throw new InvalidOptionError('PROXY endpoint', `${source.address} -> ${destination.address}`, 'IP addresses');
  return { family: 6, source: asV6(from), destination: asV6(to) };
}

/** The 16 bytes of an IPv6 address (`::` expanded). */
function ipv6Bytes(address: string): Buffer {
  let text = address;
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = dotted[1]!.split('.').map(Number) as [number, number, number, number];
    text = `${text.slice(0, -dotted[1]!.length)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.split('::') as [string, string | undefined];
  const headGroups = head === '' ? [] : head.split(':');
  const tailGroups = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? headGroups : [...headGroups, ...Array(8 - headGroups.length - tailGroups.length).fill('0'), ...tailGroups];
  const bytes = Buffer.alloc(16);
  groups.forEach((group, index) => bytes.writeUInt16BE(parseInt(group, 16), index * 2));
  return bytes;
}

/**
 * The PROXY protocol header (HAProxy's, version 1 text or version 2 binary)
 * that tells a target the user's address: written to the target before any
 * byte of the tunnel. Source is the user, destination the relay's public
 * address it connected to.
 */
export function proxyHeader(version: 'v1' | 'v2', source: Endpoint, destination: Endpoint): Buffer {
  const endpoints = sameFamily(source, destination);
  if (version === 'v1') {
    return Buffer.from(`PROXY TCP${endpoints.family} ${endpoints.source} ${endpoints.destination} ${source.port} ${destination.port}\r\n`, 'latin1');
  }
  const addresses =
    endpoints.family === 4
      ? Buffer.from([...endpoints.source.split('.'), ...endpoints.destination.split('.')].map(Number))
      : Buffer.concat([ipv6Bytes(endpoints.source), ipv6Bytes(endpoints.destination)]);
  const ports = Buffer.alloc(4);
  ports.writeUInt16BE(source.port, 0);
  ports.writeUInt16BE(destination.port, 2);
  const header = Buffer.alloc(4);
  header[0] = 0x21; // version 2, PROXY command
  header[1] = endpoints.family === 4 ? 0x11 : 0x21; // TCP over IPv4 / IPv6
  header.writeUInt16BE(addresses.length + ports.length, 2);
  return Buffer.concat([V2_SIGNATURE, header, addresses, ports]);
}
