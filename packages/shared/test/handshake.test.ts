import { afterEach, describe, expect, it } from '@jest/globals';
import { once } from 'node:events';
import WebSocket, { type WebSocketServer } from 'ws';
import type { Server } from 'node:http';
import { receiveId } from '@pool/shared';
import { closeServer, listenWs } from '../../../tests/helpers/ws-pair.js';

let server: Server | undefined;

afterEach(async () => {
  if (server) await closeServer(server);
  server = undefined;
});

/** A ws server that greets each connection with `greet`, and a client still connecting to it. */
async function greetedClient(greet: (ws: WebSocket) => void): Promise<{ ws: WebSocket; wss: WebSocketServer; serverWs: Promise<WebSocket> }> {
  const listening = await listenWs(false);
  server = listening.server;
  const serverWs = new Promise<WebSocket>((resolve) => {
    listening.wss.once('connection', (ws) => {
      ws.on('error', () => {});
      greet(ws);
      resolve(ws);
    });
  });
  const ws = new WebSocket(listening.url, { perMessageDeflate: false });
  return { ws, wss: listening.wss, serverWs };
}

describe('ID handshake (client side)', () => {
  it('reads the 4-byte ID and keeps bytes that follow it in the same read', async () => {
    const { ws } = await greetedClient((peer) => {
      peer.send(Buffer.from([0xde, 0xad, 0xbe, 0xef]));
      peer.send(Buffer.from('first'));
      peer.send(Buffer.from('-second'));
    });
    const conn = await receiveId(ws, 1_000);
    expect(conn.id).toBe('deadbeef');
    const received: Buffer[] = [];
    conn.on('data', (chunk: Buffer) => received.push(chunk));
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(Buffer.concat(received).toString()).toBe('first-second');
    conn.destroy();
  });

  it.each([
    ['3 bytes', Buffer.alloc(3), 3],
    ['5 bytes', Buffer.alloc(5), 5],
    ['0 bytes', Buffer.alloc(0), 0],
  ])('rejects an ID frame of %s with ERR_HANDSHAKE_BAD_LENGTH', async (_label, frame, length) => {
    const { ws } = await greetedClient((peer) => peer.send(frame));
    await expect(receiveId(ws, 1_000)).rejects.toMatchObject({ code: 'ERR_HANDSHAKE_BAD_LENGTH', length });
  });

  it('rejects a text ID frame with ERR_HANDSHAKE_TEXT_FRAME and closes with 1003', async () => {
    const { ws, serverWs } = await greetedClient((peer) => peer.send('a1b2c3d4'));
    const peerClosed = serverWs.then((peer) => once(peer, 'close'));
    await expect(receiveId(ws, 1_000)).rejects.toMatchObject({ code: 'ERR_HANDSHAKE_TEXT_FRAME' });
    const [code] = (await peerClosed) as [number];
    expect(code).toBe(1003);
  });

  it('rejects with ERR_HANDSHAKE_CLOSED when the peer closes before the ID', async () => {
    const { ws } = await greetedClient((peer) => peer.close(1000));
    await expect(receiveId(ws, 1_000)).rejects.toMatchObject({ code: 'ERR_HANDSHAKE_CLOSED', closeCode: 1000 });
  });

  it('rejects with ERR_HANDSHAKE_TIMEOUT and terminates when no ID arrives', async () => {
    const { ws } = await greetedClient(() => {});
    const started = Date.now();
    const closed = once(ws, 'close');
    await expect(receiveId(ws, 150)).rejects.toMatchObject({ code: 'ERR_HANDSHAKE_TIMEOUT' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
    await closed;
    expect(ws.readyState).toBe(WebSocket.CLOSED);
  });

  it.each([
    [401, 'ERR_POOL_UNAUTHORIZED'],
    [403, 'ERR_POOL_FORBIDDEN'],
    [503, 'ERR_POOL_FULL'],
    [404, 'ERR_UPGRADE_REJECTED'],
  ])('maps an HTTP %i answer to the upgrade to %s', async (status, code) => {
    const listening = await listenWs(false);
    server = listening.server;
    listening.wss.close();
    server.removeAllListeners('upgrade');
    server.on('upgrade', (_req, socket) => {
      socket.end(`HTTP/1.1 ${status} Nope\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    });
    const ws = new WebSocket(listening.url, { perMessageDeflate: false });
    await expect(receiveId(ws, 1_000)).rejects.toMatchObject({ code });
  });

  it('rejects at once for a socket that is no longer open', async () => {
    const { ws } = await greetedClient(() => {});
    ws.on('error', () => {});
    const closed = new Promise((resolve) => ws.once('close', resolve));
    ws.terminate();
    await closed;
    await expect(receiveId(ws, 1_000)).rejects.toMatchObject({ code: 'ERR_HANDSHAKE_CLOSED' });
  });
});
