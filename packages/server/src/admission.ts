import type { IncomingMessage, Server } from 'node:http';
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

/**
 * Slowloris defence for the servers we create: a client gets `headersTimeout`
 * ms to finish its TLS handshake (Node's default is 120 s) and as long again
 * to send its request headers. Node checks the headers deadline only every
 * `connectionsCheckingInterval` (30 s by default), so the check runs at least
 * four times per timeout, and at least once a second.
 */
export function httpTimeouts(headersTimeout: number): {
  handshakeTimeout: number;
  headersTimeout: number;
  requestTimeout: number;
  connectionsCheckingInterval: number;
} {
  return {
    handshakeTimeout: headersTimeout,
    headersTimeout,
    requestTimeout: headersTimeout * 2,
    connectionsCheckingInterval: Math.max(50, Math.min(1_000, Math.floor(headersTimeout / 4))),
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
