import { afterEach, describe, expect, it } from '@jest/globals';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { NO_EXTENSIONS, type Extensions } from '@pool/shared';
import { END_OF_STREAM, IdleSocket, confirmHeaderLines, negotiated, offerHeaders } from '@pool/shared/internal';
import { connPair, type ConnPair } from '../../../tests/helpers/ws-pair.js';
import { closed, hashUntilEnd, nextEvent, writeRandom } from '../../../tests/helpers/streams.js';

const HALF_CLOSE: Extensions = { keepAlive: false, halfClose: true };
let pair: ConnPair | undefined;

afterEach(async () => {
  await pair?.close();
  pair = undefined;
});

describe('extension negotiation', () => {
  it('offers what is wanted, and agrees only on what both sides have', () => {
    const offer = offerHeaders({ keepAlive: true, halfClose: true });
    expect(offer).toEqual({ 'x-pool-keepalive': 'pong', 'x-pool-half-close': '1' });
    expect(negotiated(offer, { keepAlive: true, halfClose: true })).toEqual({ keepAlive: true, halfClose: true });
    expect(negotiated(offer, { keepAlive: false, halfClose: true })).toEqual({ keepAlive: false, halfClose: true });
    // A Go npws client sends neither header.
    expect(negotiated({}, { keepAlive: true, halfClose: true })).toEqual(NO_EXTENSIONS);
    expect(negotiated({ 'x-pool-half-close': 'yes' }, { keepAlive: true, halfClose: true }).halfClose).toBe(false);
    expect(confirmHeaderLines({ keepAlive: false, halfClose: true })).toEqual(['x-pool-half-close: 1']);
    expect(offerHeaders(NO_EXTENSIONS)).toEqual({});
  });
});

describe.each([
  ['plain ws', false],
  ['TLS', true],
])('PoolConn half-close over %s', (_label, tls) => {
  it('end() ends one direction: the other still carries 4 MiB, then the WebSocket closes with 1000', async () => {
    pair = await connPair({ tls, extensions: HALF_CLOSE });
    const { server, client } = pair;
    client.allowHalfOpen = true;
    server.allowHalfOpen = true;
    // The client sends its request and half-closes, as `nc -N` does.
    const request = writeRandom(client, 64 * 1024);
    const received = hashUntilEnd(server);
    expect((await received).sha256).toBe(await request);
    expect(client.webSocket.readyState).toBe(WebSocket.OPEN);
    // Only now does the reply go the other way.
    const reply = writeRandom(server, 4 * 1024 * 1024);
    const { sha256, bytes } = await hashUntilEnd(client);
    expect(sha256).toBe(await reply);
    expect(bytes).toBe(4 * 1024 * 1024);
    const [clientClose, serverClose] = await Promise.all([nextEvent(client, 'transportClose'), nextEvent(server, 'transportClose')]);
    expect(clientClose).toEqual([1000]);
    expect(serverClose).toEqual([1000]);
  });

  it('without allowHalfOpen the peer ends its side once it reads the end, as net.Socket does', async () => {
    pair = await connPair({ tls, extensions: HALF_CLOSE });
    const { server, client } = pair;
    server.resume();
    client.resume();
    const ended = Promise.all([nextEvent(client, 'transportClose'), nextEvent(server, 'transportClose'), closed(client), closed(server)]);
    client.end('bye');
    const [[clientCode], [serverCode]] = await ended;
    expect([clientCode, serverCode]).toEqual([1000, 1000]);
    expect(server.bytesRead).toBe(3);
  });

  it('the target half-closes first: the user keeps sending and every byte arrives', async () => {
    pair = await connPair({ tls, extensions: HALF_CLOSE });
    const { server, client } = pair;
    client.allowHalfOpen = true;
    server.allowHalfOpen = true;
    server.end('greeting');
    const greeting = await hashUntilEnd(client);
    expect(greeting.bytes).toBe(8);
    const bothClosed = Promise.all([closed(client), closed(server)]);
    const [sent, got] = await Promise.all([writeRandom(client, 1024 * 1024), hashUntilEnd(server)]);
    expect(got.sha256).toBe(sent);
    await bothClosed;
  });
});

describe('PoolConn half-close errors', () => {
  it('a text message other than end-of-stream is a protocol error, closed with 1003', async () => {
    pair = await connPair({ tls: false, extensions: HALF_CLOSE });
    const { server, client } = pair;
    const error = nextEvent(client, 'error');
    server.webSocket.send('hello', { binary: false });
    expect((await error)[0]).toMatchObject({ code: 'ERR_PROTOCOL' });
  });

  it('a message after end-of-stream is a protocol error', async () => {
    pair = await connPair({ tls: false, extensions: HALF_CLOSE });
    const { server, client } = pair;
    client.resume();
    client.allowHalfOpen = true;
    const error = nextEvent(client, 'error');
    server.webSocket.send(END_OF_STREAM, { binary: false });
    server.webSocket.send(Buffer.from('late'), { binary: true });
    expect((await error)[0]).toMatchObject({ code: 'ERR_PROTOCOL' });
  });

  it('end-of-stream without the extension is a text message like any other (Go npws behaviour kept)', async () => {
    pair = await connPair({ tls: false });
    const { server, client } = pair;
    const error = nextEvent(client, 'error');
    server.webSocket.send(END_OF_STREAM, { binary: false });
    expect((await error)[0]).toMatchObject({ code: 'ERR_PROTOCOL' });
  });

  it('a write after the transport closed fails with ERR_TRANSPORT_CLOSED, not a bare ws error', async () => {
    pair = await connPair({ tls: false });
    const { server, client } = pair;
    server.resume();
    const error = nextEvent(client, 'error');
    // The close handshake is under way (CLOSING) when the bytes reach the socket.
    client.webSocket.close(1000);
    client.write('too late');
    expect((await error)[0]).toMatchObject({ code: 'ERR_TRANSPORT_CLOSED' });
  });
});

describe('IdleSocket', () => {
  it('keeps bytes and the end-of-stream that arrive while idle, and hands both to its claimer', async () => {
    pair = await connPair({ tls: false, extensions: HALF_CLOSE });
    const { server, client } = pair;
    // Re-adopt the client's WebSocket as an idle pooled connection.
    client.webSocket.removeAllListeners('message');
    client.webSocket.removeAllListeners('close');
    client.webSocket.on('error', () => {});
    const idle = new IdleSocket(client.webSocket, client.id, HALF_CLOSE);
    server.allowHalfOpen = true;
    server.end('request');
    await sleep(50);
    const conn = idle.claim();
    conn.allowHalfOpen = true;
    const { bytes } = await hashUntilEnd(conn);
    expect(bytes).toBe(7);
    expect(conn.webSocket.readyState).toBe(WebSocket.OPEN);
    conn.end('reply');
    const reply = await hashUntilEnd(server);
    expect(reply.bytes).toBe(5);
    expect((await nextEvent(conn, 'transportClose'))[0]).toBe(1000);
  });

  it('refuses data after an end-of-stream that arrived while idle', async () => {
    pair = await connPair({ tls: false, extensions: HALF_CLOSE });
    const { server, client } = pair;
    client.webSocket.removeAllListeners('message');
    client.webSocket.removeAllListeners('close');
    const idle = new IdleSocket(client.webSocket, client.id, HALF_CLOSE);
    const errors: Error[] = [];
    idle.owner = { onError: (error) => errors.push(error), onGone: () => {} };
    const serverError = nextEvent(server, 'error');
    server.webSocket.send(END_OF_STREAM, { binary: false });
    server.webSocket.send(Buffer.from('late'), { binary: true });
    await nextEvent(client.webSocket, 'close');
    expect(errors).toEqual([expect.objectContaining({ code: 'ERR_PROTOCOL' })]);
    expect((await serverError)[0]).toMatchObject({ code: 'ERR_CONN_CLOSED', closeCode: 1003 });
  });
});
