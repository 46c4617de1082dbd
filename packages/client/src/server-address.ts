import type { ConnectionOptions } from 'node:tls';
import { InvalidOptionError } from '@pool/shared';

/**
 * How the agent secures its connections to the relay:
 * - `'verified'` (npws `'2'`): TLS, certificate verified against the system CAs (default);
 * - `'insecure'` (npws `'1'`): TLS, any certificate accepted (self-signed relays in development);
 * - `'off'` (npws `'0'`): plain `ws://`;
 * - a `tls.ConnectionOptions` object (`ca`, `cert`, `key`, `servername`, …): TLS with those options.
 * TLS 1.3 is the minimum in every TLS mode.
 */
export type TlsMode = 'verified' | 'insecure' | 'off' | '0' | '1' | '2' | ConnectionOptions;

export interface RelayTarget {
  /** Always path `/` (a Go npws server upgrades any path; ours only `/`). */
  url: string;
  /** TLS options for ws, or undefined for plain `ws://`. */
  tls: ConnectionOptions | undefined;
}

const MODE_ALIASES: Record<string, 'verified' | 'insecure' | 'off'> = {
  verified: 'verified',
  '2': 'verified',
  insecure: 'insecure',
  '1': 'insecure',
  off: 'off',
  '0': 'off',
};

/**
 * Resolves the `server` and `tls` options to a URL and TLS options.
 * `server` is `host:port` (`[v6]:port` for IPv6) or a `ws://`/`wss://` URL.
 * A `ws://` URL means no TLS; a `tls` mode that says otherwise is an error,
 * as is `tls: 'off'` with a `wss://` URL.
 */
export function resolveRelayTarget(server: string, tls: TlsMode | undefined): RelayTarget {
  const mode = typeof tls === 'object' ? 'options' : tls === undefined ? undefined : MODE_ALIASES[tls];
  if (mode === undefined && tls !== undefined) {
    throw new InvalidOptionError('tls', tls, "'verified', 'insecure', 'off', '0', '1', '2' or tls.ConnectionOptions");
  }
  const scheme = /^(wss?):\/\//i.exec(server)?.[1]?.toLowerCase();
  let parsed: URL;
  try {
    parsed = new URL(scheme ? server : `wss://${server}`);
  } catch {
    throw new InvalidOptionError('server', server, 'host:port or a ws:// or wss:// URL');
  }
  if (!parsed.hostname || (!scheme && !parsed.port) || parsed.port === '0') {
    throw new InvalidOptionError('server', server, 'host:port or a ws:// or wss:// URL');
  }
  const secure = scheme === 'ws' ? false : scheme === 'wss' ? true : mode !== 'off';
  if (scheme === 'ws' && mode !== undefined && mode !== 'off') {
    throw new InvalidOptionError('tls', tls, `'off' for a ws:// server (use wss:// for TLS)`);
  }
  if (scheme === 'wss' && mode === 'off') {
    throw new InvalidOptionError('tls', tls, `a TLS mode for a wss:// server (use ws:// for plain)`);
  }
  const url = `${secure ? 'wss' : 'ws'}://${parsed.host}/`;
  if (!secure) return { url, tls: undefined };
  const base: ConnectionOptions = typeof tls === 'object' ? { ...tls } : {};
  if (mode === 'insecure') base.rejectUnauthorized = false;
  return { url, tls: { ...base, minVersion: 'TLSv1.3' } };
}
