import type { IncomingMessage, Server } from 'node:http';
import { Server as HttpsServer } from 'node:https';
import type { Server as NetServer } from 'node:net';
import type { Duplex } from 'node:stream';
import { TOKEN_HEADER } from '@pool/shared';
import type { Allowlist } from './allowlist.js';
import { tokensEqual } from './token.js';

const STATUS_TEXT: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  503: 'Service Unavailable',
};

/**
 * Whether an upgrade request may proceed: 403 for a peer outside the allowlist
 * (by its socket address; forwarding headers are never trusted), 401 for a
 * missing or wrong token, undefined when admitted.
 */
export function refusalFor(request: IncomingMessage, allowlist: Allowlist, token: string | undefined): 401 | 403 | undefined {
  if (!allowlist.allows(request.socket.remoteAddress)) return 403;
  if (token !== undefined && !tokensEqual(token, request.headers[TOKEN_HEADER])) return 401;
  return undefined;
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
    const timer = setTimeout(() => socket.destroy(), this.#ms);
    this.#timers.set(socket, timer);
    socket.once('close', () => this.met(socket));
  };
}

/** `server.listen` as a promise that rejects with the listen error (EADDRINUSE, …). */
export function listen(server: Server | NetServer, port: number, host: string | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
}
