import { BlockList, isIP } from 'node:net';
import { InvalidOptionError } from '@pool/shared';

const MAPPED_IPV4 = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i;

/** `::ffff:203.0.113.7` (how a dual-stack listener reports IPv4 peers) becomes `203.0.113.7`. */
export function normalizeAddress(address: string): string {
  const mapped = MAPPED_IPV4.exec(address);
  return mapped ? mapped[1]! : address.toLowerCase();
}

/** Which peers may open pool connections. */
export interface Allowlist {
  /** True when any peer is allowed (no entries were given). */
  readonly allowsAll: boolean;
  allows(address: string | undefined): boolean;
}

/**
 * Builds an allowlist from IPs and CIDR ranges, IPv4 and IPv6 (`'203.0.113.7'`,
 * `'10.0.0.0/8'`, `'2001:db8::/32'`, `'::ffff:10.0.0.1'`). No entries (or only
 * empty strings, npws's `clientIP: ""`) allows everyone. Any malformed entry
 * throws `InvalidOptionError` (`ERR_INVALID_OPTION`): a typo must not silently
 * open or close the relay.
 */
export function parseAllowlist(entries: string | readonly string[] | undefined): Allowlist {
  const list = (typeof entries === 'string' ? [entries] : (entries ?? [])).map((entry) => entry.trim()).filter(Boolean);
  if (list.length === 0) return { allowsAll: true, allows: () => true };

  const blockList = new BlockList();
  for (const entry of list) {
    const [rawAddress, prefixText, extra] = entry.split('/');
    const address = normalizeAddress(rawAddress ?? '');
    const version = isIP(address);
    if (version === 0 || extra !== undefined) throw new InvalidOptionError('allow entry', entry, 'an IP address or CIDR range');
    const type = version === 4 ? 'ipv4' : 'ipv6';
    if (prefixText === undefined) {
      blockList.addAddress(address, type);
      continue;
    }
    // An IPv4-mapped range (::ffff:10.0.0.0/104) is the IPv4 range it maps (10.0.0.0/8).
    const mapped = version === 4 && address !== rawAddress;
    const maxPrefix = mapped ? 128 : version === 4 ? 32 : 128;
    const minPrefix = mapped ? 96 : 0;
    const prefix = Number(prefixText);
    if (!/^\d{1,3}$/.test(prefixText) || prefix > maxPrefix || prefix < minPrefix) {
      throw new InvalidOptionError('allow entry', entry, `a prefix length from ${minPrefix} to ${maxPrefix}`);
    }
    blockList.addSubnet(address, mapped ? prefix - 96 : prefix, type);
  }
  return {
    allowsAll: false,
    allows(peer) {
      if (peer === undefined) return false;
      const address = normalizeAddress(peer);
      const version = isIP(address);
      return version !== 0 && blockList.check(address, version === 4 ? 'ipv4' : 'ipv6');
    },
  };
}
