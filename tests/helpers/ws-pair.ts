import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import WebSocket, { WebSocketServer } from 'ws';
import { NO_EXTENSIONS, PoolConn, generateId, receiveId, sendId, type Extensions } from '@pool/shared';
import { selfSignedCert } from './tls-cert.js';

export interface ConnPair {
  /** The end that sent the ID (the relay's side). */
  server: PoolConn;
  /** The end that read the ID (the agent's side). */
  client: PoolConn;
  /** Destroys both ends and closes the server. */
  close(): Promise<void>;
}

/** Starts an http(s) server on 127.0.0.1 with a bare ws server behind it. */
export async function listenWs(tls: boolean): Promise<{ server: Server; wss: WebSocketServer; url: string }> {
  const server = tls ? createHttpsServer(await selfSignedCert()) : createHttpServer();
  const wss = new WebSocketServer({ server, perMessageDeflate: false });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { server, wss, url: `${tls ? 'wss' : 'ws'}://127.0.0.1:${port}/` };
}

export async function closeServer(server: Server): Promise<void> {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

/**
 * Two PoolConns joined over a real WebSocket on loopback, after a real ID
 * handshake, both with `extensions` (as if negotiated; default none).
 */
export async function connPair(options: { tls: boolean; extensions?: Extensions }): Promise<ConnPair> {
  const { server, wss, url } = await listenWs(options.tls);
  const extensions = options.extensions ?? NO_EXTENSIONS;
  const serverSide = new Promise<PoolConn>((resolve) => {
    wss.once('connection', (ws) => resolve(sendId(ws, generateId(() => false), { extensions })));
  });
  const ws = new WebSocket(url, { perMessageDeflate: false, rejectUnauthorized: false });
  const [client, serverConn] = await Promise.all([receiveId(ws, 5_000, { extensions }), serverSide]);
  return {
    server: serverConn,
    client,
    async close() {
      // Destroying one end errors the other: that is the behaviour under test elsewhere.
      client.on('error', () => {});
      serverConn.on('error', () => {});
      client.destroy();
      serverConn.destroy();
      wss.close();
      await closeServer(server);
    },
  };
}
