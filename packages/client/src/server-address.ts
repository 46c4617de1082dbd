import type { ConnectionOptions } from 'node:tls';
import { InvalidOptionError, parseFingerprint } from '@pool/shared/internal';

/** TLS options for the relay connection: Node's, plus a certificate pin. */
export interface RelayTlsOptions extends ConnectionOptions {
  /**
   * The SHA-256 fingerprint of the relay's certificate (`AB:CD:…` as
   * pool-relay prints it, or 64 hex digits). Set, it replaces chain and name
   * verification: only a certificate with this fingerprint is accepted,
   * self-signed or not, whatever address the relay is reached at. Not with `ca`.
   */
  fingerprint?: string;
}

/**
 * How the agent secures its connections to the relay:
 * - `'verified'` (npws `'2'`): TLS, certificate verified against the system CAs (default);
 * - `'insecure'` (npws `'1'`): TLS, any certificate accepted (self-signed relays in development);
 * - `'off'` (npws `'0'`): plain `ws://`;
 * - a {@link RelayTlsOptions} object (`ca`, `cert`, `key`, `servername`, `fingerprint`, …): TLS with those options.
 * TLS 1.3 is the minimum in every TLS mode.
 */
export type TlsMode = 'verified' | 'insecure' | 'off' | '0' | '1' | '2' | RelayTlsOptions;

/**
 * This agent's key: a certificate and its private key (PEM), presented to the
 * relay in every TLS handshake (mutual TLS). A relay that pins its SHA-256
 * fingerprint gives a connection without it nothing, token or not.
 */
export interface AgentIdentityOptions {
  cert: string | Buffer;
  key: string | Buffer;
}

export interface RelayTarget {
  /** Always path `/` (a Go npws server upgrades any path; ours only `/`). */
  url: string;
  /** TLS options for ws, or undefined for plain `ws://`. */
  tls: ConnectionOptions | undefined;
  /** The pinned certificate fingerprint (`AB:CD:…`), if any: connections must go through `pinCertificate`. */
  fingerprint: string | undefined;
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
 * as is `tls: 'off'` with a `wss://` URL. An `identity` is presented in
 * every handshake, whatever the mode; it needs TLS.
 */
export function resolveRelayTarget(server: string, tls: TlsMode | undefined, identity?: AgentIdentityOptions): RelayTarget {
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
    throw new InvalidOptionError('tls', typeof tls === 'object' ? '<TLS options>' : tls, `'off' for a ws:// server (use wss:// for TLS)`);
  }
  if (scheme === 'wss' && mode === 'off') {
    throw new InvalidOptionError('tls', tls, `a TLS mode for a wss:// server (use ws:// for plain)`);
  }
  const url = `${secure ? 'wss' : 'ws'}://${parsed.host}/`;
  if (!secure && identity !== undefined) throw new InvalidOptionError('identity', '<key>', 'a TLS relay: a key is proven in the TLS handshake, and ws:// has none');
  if (!secure) return { url, tls: undefined, fingerprint: undefined };
  const { fingerprint: pin, ...base }: RelayTlsOptions = typeof tls === 'object' ? { ...tls } : {};
  if (identity !== undefined) Object.assign(base, { cert: identity.cert, key: identity.key });
  if (mode === 'insecure') base.rejectUnauthorized = false;
  let fingerprint: string | undefined;
  if (pin !== undefined) {
    fingerprint = parseFingerprint(pin);
    if (fingerprint === undefined) throw new InvalidOptionError('tls.fingerprint', pin, 'a SHA-256 fingerprint: 32 bytes as AB:CD:… or 64 hex digits');
    if (base.ca !== undefined) throw new InvalidOptionError('tls.ca', '<ca>', 'no ca with tls.fingerprint: the pin replaces verification against a CA');
  }
  return { url, tls: { ...base, minVersion: 'TLSv1.3' }, fingerprint };
}
