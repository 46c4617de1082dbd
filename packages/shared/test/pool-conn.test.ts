import { afterEach, describe, expect, it } from '@jest/globals';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { PoolConn } from '@pool/shared';
import { connPair, type ConnPair } from '../../../tests/helpers/ws-pair.js';
import { closed, hashExactly, hashStream, writeRandom } from '../../../tests/helpers/streams.js';

const MiB = 1024 * 1024;
let pair: ConnPair | undefined;

afterEach(async () => {
  await pair?.close();
  pair = undefined;
});

describe.each([
  ['plain ws', false],
  ['TLS', true],
])('PoolConn over %s', (_label, tls) => {
  it('moves 64 MiB of random bytes each way intact, at the same time', async () => {
    pair = await connPair({ tls });
    const { server, client } = pair;
    // These ends negotiated no half-close (as with a Go npws peer): a side that ended first
    // would cut the other's writes short (docs/protocol.md, section 2), so both read everything first.
    const [sentUp, sentDown, receivedUp, receivedDown] = await Promise.all([
      writeRandom(client, 64 * MiB, 64 * 1024, false),
      writeRandom(server, 64 * MiB, 64 * 1024, false),
      hashExactly(server, 64 * MiB),
      hashExactly(client, 64 * MiB),
    ]);
    expect(receivedUp).toBe(sentUp);
    expect(receivedDown).toBe(sentDown);
    expect(client.bytesWritten).toBe(64 * MiB);
    expect(server.bytesRead).toBe(64 * MiB);
  });

  it('looks like a net.Socket: addresses, ports, id, TLS state', async () => {
    pair = await connPair({ tls });
    const { server, client } = pair;
    expect(client).toBeInstanceOf(PoolConn);
    expect(client.id).toBe(server.id);
    expect(client.id).toMatch(/^[0-9a-f]{8}$/);
    expect(client.remoteAddress).toBe('127.0.0.1');
    expect(client.remoteFamily).toBe('IPv4');
    expect(client.remotePort).toBe(server.localPort);
    expect(server.remotePort).toBe(client.localPort);
    expect(client.encrypted).toBe(tls);
    if (tls) {
      expect(client.getProtocol()).toBe('TLSv1.3');
      expect(client.getCipher()?.name).toMatch(/^TLS_/);
      expect(client.getPeerCertificate()?.subject.CN).toBe('localhost');
    } else {
      expect(client.getProtocol()).toBeNull();
      expect(client.getCipher()).toBeNull();
      expect(client.getPeerCertificate()).toBeNull();
    }
    expect(client.setNoDelay(true)).toBe(client);
    expect(client.setKeepAlive(true, 1_000)).toBe(client);
  });
});

describe('PoolConn backpressure', () => {
  it('a reader that stops reading pauses the socket; the writer sees write() return false and stays bounded', async () => {
    pair = await connPair({ tls: false });
    const { server, client } = pair;
    client.pause(); // the reader stops reading and never resumes
    const chunk = Buffer.alloc(64 * 1024, 7);
    let accepted = 0;
    let refusedAt = -1;
    // Write for up to 2 s, waiting for 'drain' as a well-behaved writer does.
    const deadline = Date.now() + 2_000;
    while (Date.now() < deadline) {
      accepted += chunk.length;
      if (!server.write(chunk)) {
        if (refusedAt < 0) refusedAt = accepted;
        const drained = await Promise.race([once(server, 'drain').then(() => true), sleep(300).then(() => false)]);
        if (!drained) break;
      }
    }
    expect(refusedAt).toBeGreaterThan(0);
    // Kernel socket buffers plus both stream windows: tens of MiB at most, never the 2 s worth
    // (gigabytes) an unbounded writer would have queued.
    expect(accepted).toBeLessThan(64 * MiB);
    expect(client.readableLength).toBeLessThan(8 * MiB);
    expect(client.webSocket.isPaused).toBe(true);

    // Once the reader resumes, every byte still arrives.
    let received = 0;
    client.on('data', (data: Buffer) => { received += data.length; });
    client.resume();
    server.end();
    await once(client, 'end');
    expect(received).toBe(accepted);
  });
});

describe('PoolConn close semantics', () => {
  it('end() flushes then closes with 1000; the peer reads every byte then end-of-file', async () => {
    pair = await connPair({ tls: false });
    const { server, client } = pair;
    const peerClose = once(server.webSocket, 'close');
    const clientClosed = closed(client);
    client.resume();
    client.end(Buffer.from('last words'));
    const received = await hashStream(server);
    expect(received.bytes).toBe(10);
    const [code] = (await peerClose) as [number];
    expect(code).toBe(1000);
    await clientClosed;
    expect(client.destroyed).toBe(true);
  });

  /** Fills the reader's window: the server writes until the client's socket is paused. */
  async function stallReader(p: ConnPair): Promise<void> {
    p.client.pause();
    const chunk = Buffer.alloc(256 * 1024, 1);
    for (let i = 0; i < 200 && !p.client.webSocket.isPaused; i++) {
      if (!p.server.write(chunk)) await Promise.race([once(p.server, 'drain'), sleep(50)]);
    }
    expect(p.client.webSocket.isPaused).toBe(true);
  }

  it('end() on a connection whose reader stopped still completes the close handshake promptly', async () => {
    pair = await connPair({ tls: false });
    const { server, client } = pair;
    server.on('error', () => {});
    await stallReader(pair);
    const started = Date.now();
    const peerClosed = once(server.webSocket, 'close');
    client.end();
    await once(client, 'finish');
    const [code] = (await peerClosed) as [number];
    expect(code).toBe(1000);
    expect(Date.now() - started).toBeLessThan(2_000); // ws's close timeout would be 30 s
  });

  it('destroy() after sending a close code completes the handshake even with data still arriving', async () => {
    pair = await connPair({ tls: false });
    const { server, client } = pair;
    const serverError = once(server, 'error');
    await stallReader(pair);
    const started = Date.now();
    client.webSocket.close(4502, 'target unreachable'); // what an agent does when its target refuses
    client.destroy();
    const [error] = await serverError;
    expect(error).toMatchObject({ code: 'ERR_CONN_CLOSED', closeCode: 4502 });
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it('a peer close with a code other than 1000/1001 is ERR_CONN_CLOSED', async () => {
    pair = await connPair({ tls: false });
    const { server, client } = pair;
    const errored = once(client, 'error');
    server.webSocket.close(4001, 'bye');
    const [error] = await errored;
    expect(error).toMatchObject({ code: 'ERR_CONN_CLOSED', closeCode: 4001, reason: 'bye' });
  });

  it('a text message from the peer is ERR_PROTOCOL and is answered with 1003', async () => {
    pair = await connPair({ tls: false });
    const { server, client } = pair;
    const peerClose = once(server.webSocket, 'close');
    const errored = once(client, 'error');
    server.on('error', () => {}); // our 1003 is an abnormal close for the sender
    server.webSocket.send('not binary');
    const [error] = await errored;
    expect(error).toMatchObject({ code: 'ERR_PROTOCOL' });
    const [code] = (await peerClose) as [number];
    expect(code).toBe(1003);
  });

  it('an abrupt socket kill gives exactly one error and one close, and leaves no timer', async () => {
    pair = await connPair({ tls: false });
    const { server, client } = pair;
    const timersBefore = process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    let errors = 0;
    let closes = 0;
    client.on('error', () => errors++);
    client.on('close', () => closes++);
    server.on('error', () => {});
    const clientClosed = closed(client);
    (server.webSocket as unknown as { _socket: { destroy(): void } })._socket.destroy();
    await clientClosed;
    await sleep(50);
    expect(errors).toBe(1);
    expect(closes).toBe(1);
    expect(client.destroyed).toBe(true);
    // Node and jest start short-lived timers of their own now and then; one of ours (a close
    // timeout is 30 s) would outlive this 1 s wait.
    const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    for (let i = 0; i < 20 && timers() > timersBefore; i++) await sleep(50);
    expect(timers()).toBeLessThanOrEqual(timersBefore);
  });

  it('destroy() terminates the socket: the peer sees an abnormal close', async () => {
    pair = await connPair({ tls: false });
    const { server, client } = pair;
    const errored = once(server, 'error');
    client.destroy();
    const [error] = await errored;
    expect(error).toMatchObject({ code: 'ERR_CONN_CLOSED', closeCode: 1006 });
  });

  it('setTimeout emits timeout after inactivity, like net.Socket', async () => {
    pair = await connPair({ tls: false });
    const { client } = pair;
    const started = Date.now();
    await new Promise<void>((resolve) => client.setTimeout(100, resolve));
    expect(Date.now() - started).toBeGreaterThanOrEqual(90);
    expect(client.destroyed).toBe(false);
    client.setTimeout(0);
  });
});
