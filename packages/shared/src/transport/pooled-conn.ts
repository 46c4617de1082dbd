import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { CipherNameAndProtocol, DetailedPeerCertificate, PeerCertificate } from 'node:tls';
import type { Extensions } from '../wire/extensions.js';

/**
 * How a pooled connection travels: `'websocket'` (npws's wire: binary
 * messages over `ws://` or `wss://`) or `'tls'` (raw TLS chosen by ALPN
 * `pool/1`: the bytes themselves, no framing).
 */
export type TransportName = 'websocket' | 'tls';

/**
 * A pooled connection handed out by a pool: a `net.Socket`-shaped `Duplex`
 * whatever the transport. On the WebSocket transport it is a {@link PoolConn};
 * on the raw TLS transport it is the `TLSSocket` itself, so that a tunnel's
 * bytes pass through no JavaScript of ours.
 *
 * Events besides the Duplex ones: `'transportClose'` once the transport has
 * closed, and `'timeout'` after `setTimeout`.
 */
export interface PooledConn extends Duplex {
  /** The connection ID, 8 lowercase hex characters. */
  readonly id: string;
  readonly transport: TransportName;
  /** What the connection negotiated (the raw transport always has half-close and never pings). */
  readonly extensions: Extensions;
  /** True while the transport is open: the only state in which a pool may hand this out. */
  readonly transportOpen: boolean;
  /** The TCP (or TLS) socket that carries it. An escape hatch: writing to it directly corrupts the stream. */
  readonly transportSocket: Socket;
  /** Payload bytes received from the peer. */
  readonly bytesRead: number;
  /** Payload bytes sent. */
  readonly bytesWritten: number;
  readonly remoteAddress: string | undefined;
  readonly remotePort: number | undefined;
  readonly remoteFamily: string | undefined;
  readonly localAddress: string | undefined;
  readonly localPort: number | undefined;
  /** Whether the transport is TLS. */
  readonly encrypted: boolean;
  getPeerCertificate(detailed: true): DetailedPeerCertificate | null;
  getPeerCertificate(detailed?: boolean): PeerCertificate | null;
  getCipher(): CipherNameAndProtocol | null;
  getProtocol(): string | null;
  isSessionReused(): boolean;
  setTimeout(ms: number, callback?: () => void): this;
  setNoDelay(noDelay?: boolean): this;
  setKeepAlive(enable?: boolean, initialDelayMs?: number): this;
  /**
   * Ends the connection abruptly, telling the peer that its target could not
   * be reached, so that it drops its user at once: close code 4502 on the
   * WebSocket transport, a TCP reset on the raw one.
   */
  refuseTarget(reason: string): void;
}

/** Told about what happens to a pool's idle connections; one per pool, shared by all of them. */
export interface IdleConnectionOwner {
  onError(error: Error): void;
  onGone(socket: IdleConnection): void;
}

/**
 * A pooled connection nobody has claimed yet, on either transport: it keeps
 * what arrives for whoever claims it, and tells its owner when it breaks.
 */
export interface IdleConnection {
  readonly id: string;
  readonly transport: TransportName;
  readonly extensions: Extensions;
  /** Who dialled it, as the pool groups connections (a relay: the token's name, else the IP). */
  readonly client: string;
  owner: IdleConnectionOwner | undefined;
  readonly transportOpen: boolean;
  readonly transportSocket: Socket;
  /** Hands the connection, and every byte kept for it, to its claimer. */
  claim(): PooledConn;
  /** Ends the connection at once; `error` is reported to the owner. */
  destroy(error?: Error): void;
  /**
   * Closes the connection cleanly (a WebSocket with `code`, raw TLS with
   * close_notify) and resolves once it has closed, terminating it after `graceMs`.
   */
  close(code: number, graceMs: number): Promise<void>;
}
