import { afterEach, describe, expect, it } from '@jest/globals';
import { createSocket, type Socket } from 'node:dgram';
import { once } from 'node:events';
import { DatagramBatch, DatagramReader, type PoolConn } from '@pool/shared/internal';
import { connPair, type ConnPair } from '../../../tests/helpers/ws-pair.js';
import { UdpService } from '../src/udp-service.js';

// A UdpService whose flows get real pooled connections (PoolConn pairs over a
// real WebSocket), the agent's end of each played by the test.

const pairs: ConnPair[] = [];
const sockets: Socket[] = [];
let service: UdpService | undefined;

afterEach(async () => {
  service?.close();
  service = undefined;
  for (const socket of sockets.splice(0)) socket.close();
  await Promise.all(pairs.splice(0).map((pair) => pair.close()));
});

async function userSocket(): Promise<Socket> {
  const socket = createSocket('udp4');
  sockets.push(socket);
  socket.bind(0, '127.0.0.1');
  await once(socket, 'listening');
  return socket;
}

/** The agent's end of a flow, echoing every datagram back. */
function echo(agentEnd: PoolConn, maxDatagram: number): void {
  const reader = new DatagramReader(maxDatagram);
  const batch = new DatagramBatch((frames) => agentEnd.write(frames));
  agentEnd.on('data', (chunk: Buffer) => {
    for (const datagram of reader.push(chunk)) batch.add(datagram);
  });
}

describe('UdpService', () => {
  it('keeps a stalled flow from delaying another: the stalled one drops (backpressure), the other is answered in full', async () => {
    const agentEnds = new Map<number, PoolConn>();
    const stalledUser = await userSocket();
    const activeUser = await userSocket();
    service = new UdpService(
      { name: 'u', agent: 'a', publicHost: '127.0.0.1', publicPort: 0, protocol: 'udp' },
      async (_service, source, maxDatagram) => {
        const pair = await connPair({ tls: false });
        pairs.push(pair);
        agentEnds.set(source.port, pair.client);
        // The stalled flow's agent never reads: its connection backs up.
        if (source.port === stalledUser.address().port) pair.client.pause();
        else echo(pair.client, maxDatagram);
        return pair.server;
      },
      (error) => {
        throw error;
      },
    );
    await service.listen();
    const port = service.port();

    const flood = Buffer.alloc(1_000, 0x66);
    let flooding = true;
    const floodDone = (async () => {
      for (let round = 0; round < 60 && flooding; round++) {
        for (let i = 0; i < 500; i++) stalledUser.send(flood, port, '127.0.0.1');
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    })();

    let answered = 0;
    for (let i = 0; i < 200; i++) {
      const datagram = Buffer.from(`active ${i}`);
      const reply = new Promise<Buffer>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no reply to datagram ${i}`)), 5_000);
        activeUser.once('message', (message: Buffer) => {
          clearTimeout(timer);
          resolve(message);
        });
      });
      activeUser.send(datagram, port, '127.0.0.1');
      if ((await reply).equals(datagram)) answered++;
    }
    flooding = false;
    await floodDone;
    expect(answered).toBe(200);
    expect(agentEnds.size).toBe(2);
    expect(service.stats.udp.dropped.backpressure).toBeGreaterThan(0);
    expect(service.stats.open).toBe(2);
  }, 60_000);

  it('keeps at most 64 KiB of a flow while its connection is being claimed, and delivers what it kept in order', async () => {
    let release: () => void = () => {};
    const claimed = new Promise<void>((resolve) => (release = resolve));
    const user = await userSocket();
    service = new UdpService(
      { name: 'u', agent: 'a', publicHost: '127.0.0.1', publicPort: 0, protocol: 'udp' },
      async (_service, _source, maxDatagram) => {
        await claimed;
        const pair = await connPair({ tls: false });
        pairs.push(pair);
        echo(pair.client, maxDatagram);
        return pair.server;
      },
      (error) => {
        throw error;
      },
    );
    await service.listen();
    const replies: Buffer[] = [];
    user.on('message', (reply: Buffer) => replies.push(reply));
    const sent = [Buffer.alloc(30_000, 1), Buffer.alloc(30_000, 2), Buffer.alloc(30_000, 3), Buffer.alloc(10, 4)];
    for (const datagram of sent) user.send(datagram, service.port(), '127.0.0.1');
    const deadline = Date.now() + 5_000;
    while (service.stats.udp.datagrams.fromUsers < sent.length && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(service.stats.udp.dropped.queueFull).toBe(1);
    release();
    while (replies.length < 3 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(replies.map((reply) => [reply.length, reply[0]])).toEqual([
      [30_000, 1],
      [30_000, 2],
      [10, 4],
    ]);
  }, 30_000);

  it('ends a flow whose connection closes, and opens a new one for the next datagram', async () => {
    let opened = 0;
    const user = await userSocket();
    service = new UdpService(
      { name: 'u', agent: 'a', publicHost: '127.0.0.1', publicPort: 0, protocol: 'udp' },
      async (_service, _source, maxDatagram) => {
        opened++;
        const pair = await connPair({ tls: false });
        pairs.push(pair);
        echo(pair.client, maxDatagram);
        return pair.server;
      },
      (error) => {
        throw error;
      },
    );
    await service.listen();
    const exchange = async (text: string): Promise<string> => {
      const reply = once(user, 'message');
      user.send(text, service!.port(), '127.0.0.1');
      return String((await reply)[0]);
    };
    expect(await exchange('one')).toBe('one');
    pairs[0]!.client.destroy();
    const deadline = Date.now() + 5_000;
    while (service.stats.open > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(service.stats).toMatchObject({ open: 0, finished: 1 });
    expect(await exchange('two')).toBe('two');
    expect(opened).toBe(2);
  }, 30_000);
});
