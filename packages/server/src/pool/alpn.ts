import type { Server as HttpsServer } from 'node:https';
import type { TLSSocket } from 'node:tls';
import { POOL_ALPN } from '@pool/shared/internal';

/**
 * Which transports a relay's agents' port takes: `'auto'` both, chosen by
 * ALPN (`pool/1` raw TLS, anything else WebSocket); `'tls'` raw TLS only
 * (a WebSocket upgrade for a pooled connection is refused); `'websocket'`
 * WebSocket only (an agent that offers `pool/1` is answered without it).
 */
export type TransportChoice = 'auto' | 'tls' | 'websocket';

/**
 * The `ALPNCallback` of a TLS server that takes both transports: `pool/1`
 * when offered, else `http/1.1` when offered, else the client's first choice
 * (an HTTP/1.1 server answering a client that offered only `h2` does what it
 * did before it had ALPN: leaves that to HTTP). Returning nothing would end
 * the handshake with a fatal alert.
 */
export function selectAlpn({ protocols }: { protocols: string[] }): string | undefined {
  if (protocols.includes(POOL_ALPN)) return POOL_ALPN;
  return protocols.includes('http/1.1') ? 'http/1.1' : protocols[0];
}

/**
 * Sends the TLS connections of an https server that negotiated `pool/1` to
 * `onRaw` instead of HTTP: the server's HTTP connection listener runs for
 * the others only. Returns what undoes it.
 */
export function routeByAlpn(server: HttpsServer, onRaw: (socket: TLSSocket) => void): () => void {
  const http = server.listeners('secureConnection') as Array<(socket: TLSSocket) => void>;
  for (const listener of http) server.removeListener('secureConnection', listener);
  const route = (socket: TLSSocket): void => {
    if (socket.alpnProtocol === POOL_ALPN) onRaw(socket);
    else for (const listener of http) listener.call(server, socket);
  };
  server.on('secureConnection', route);
  return () => {
    server.removeListener('secureConnection', route);
    for (const listener of http) server.on('secureConnection', listener);
  };
}
