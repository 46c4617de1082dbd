import type { IncomingHttpHeaders, IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { Server as HttpsServer } from 'node:https';
import type { Duplex } from 'node:stream';
import { POOL_ALPN, TOKEN_HEADER } from '@pool/shared/internal';
import { normalizeAddress, type Allowlist } from './allowlist.js';
import { matchToken, type TokenEntry } from './token.js';

const STATUS_TEXT: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  409: 'Conflict',
  503: 'Service Unavailable',
};

/**
 * What a new pooled connection asks with: the upgrade request on the
 * WebSocket transport, the preface's headers and the TLS socket on the raw one.
 */
export interface PoolRequest {
  readonly headers: IncomingHttpHeaders;
  readonly socket: Socket;
}

/** Who may open connections: checked on every upgrade request, before any WebSocket exists. */
export interface AdmissionPolicy {
  readonly allowlist: Allowlist;
  /** Accepted tokens; undefined when no token is required. */
  readonly tokens: readonly TokenEntry[] | undefined;
}

/** An upgrade request refused (403 outside the allowlist, 401 for a bad token), or admitted as a client. */
export type AdmissionDecision = { refused: 401 | 403 } | { client: string };

/**
 * Checks an upgrade request against the policy. The peer is judged by its
 * socket address (forwarding headers are never trusted), and identified by
 * its named token if it presented one, else by that address.
 */
export function admit(request: PoolRequest, policy: AdmissionPolicy): AdmissionDecision {
  const address = request.socket.remoteAddress;
  if (!policy.allowlist.allows(address)) return { refused: 403 };
  if (policy.tokens === undefined) return { client: normalizeAddress(address ?? '') };
  const token = matchToken(policy.tokens, request.headers[TOKEN_HEADER]);
  if (token === undefined) return { refused: 401 };
  return { client: token.client ?? normalizeAddress(address ?? '') };
}

/**
 * Writes a plain HTTP answer on the raw socket of an upgrade we refuse (so no
 * WebSocket is ever created) and destroys the socket once it is written.
 */
export function refuseUpgrade(socket: Duplex, status: number, body: string): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? 'Error'}\r\nConnection: close\r\nContent-Type: text/plain\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    () => socket.destroy(),
  );
}

/** The path of a request URL, without query or fragment. */
export function pathOf(url: string | undefined): string {
  return url?.split(/[?#]/, 1)[0] ?? '';
}

/** TLS handshake and request-timeout options for the servers we create. */
export function httpTimeouts(headersTimeout: number): { handshakeTimeout: number; headersTimeout: number; requestTimeout: number } {
  // Node's own headersTimeout stays as a backstop; HeadersDeadline enforces it promptly.
  return { handshakeTimeout: headersTimeout, headersTimeout, requestTimeout: headersTimeout * 2 };
}

/**
 * Slowloris defence: a connection must deliver its request headers within
 * `ms` of connecting (of finishing its TLS handshake, on https, whose own
 * `handshakeTimeout` covers the handshake), or it is destroyed.
 *
 * Node enforces `headersTimeout` by sweeping every connection the server holds
 * each `connectionsCheckingInterval`, upgraded ones included: a relay holding
 * 10,000 pooled connections spent 7% of a core on a 1 s sweep. Here each
 * connection has one timer, and only until its headers arrive; call `met()`
 * from the 'request' and 'upgrade' handlers.
 */
export class HeadersDeadline {
  /** Connections still owing their headers; none stays longer than `ms`. */
  readonly #timers = new Map<Duplex, NodeJS.Timeout>();
  readonly #ms: number;

  constructor(server: Server, ms: number) {
    this.#ms = ms;
    server.on(server instanceof HttpsServer ? 'secureConnection' : 'connection', this.#arm);
  }

  /** The socket's request headers have arrived: no deadline any more. */
  met(socket: Duplex): void {
    clearTimeout(this.#timers.get(socket));
    this.#timers.delete(socket);
  }

  /** Destroys every connection that has not sent its headers yet (the server is closing). */
  close(): void {
    for (const [socket, timer] of this.#timers) {
      clearTimeout(timer);
      socket.destroy();
    }
    this.#timers.clear();
  }

  readonly #arm = (socket: Duplex): void => {
    // A raw TLS connection sends no request: its preface has a deadline of its own.
    if ((socket as TLSSocket).alpnProtocol === POOL_ALPN) return;
    const timer = setTimeout(() => socket.destroy(), this.#ms);
    this.#timers.set(socket, timer);
    socket.once('close', () => this.met(socket));
  };
}

/**
 * The answer to a plain HTTP request on the agents' port: `426` with
 * `Upgrade: websocket` on a path that speaks WebSocket, `404` on any other,
 * each with a text body, and the connection closed.
 */
export function answerPlainRequest(request: IncomingMessage, response: ServerResponse, webSocketPaths: readonly string[]): void {
  const [status, body] = webSocketPaths.includes(pathOf(request.url)) ? [426, 'this endpoint speaks WebSocket only'] : [404, 'not found'];
  response.writeHead(status, {
    'Content-Type': 'text/plain',
    'Content-Length': Buffer.byteLength(body),
    Connection: 'close',
    ...(status === 426 && { Upgrade: 'websocket' }),
  });
  response.end(body);
}
