import { afterEach, describe, expect, it } from '@jest/globals';
import type { Socket } from 'node:dgram';
import { once } from 'node:events';
import { DatagramBatch, readDatagrams, type PoolConn } from '@pool/shared/internal';
import { boundUdpSocket } from '../../../tests/helpers/udp.js';
import { connPair, type ConnPair } from '../../../tests/helpers/ws-pair.js';
import { REPLY_ALLOWANCE_BYTES, UdpService, type FlowOpener, type UdpOptions } from '../src/udp-service.js';

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
  const socket = await boundUdpSocket();
  sockets.push(socket);
  return socket;
}

/** A listening UdpService on 127.0.0.1 whose flows take their connections from `openFlow`; errors it reports are kept in `errors`. */
async function startService(openFlow: FlowOpener, errors: Error[] = [], udp: UdpOptions = {}): Promise<UdpService> {
  service = new UdpService({ name: 'u', agent: 'a', publicHost: '127.0.0.1', publicPort: 0, protocol: 'udp', udp }, openFlow, (error) => errors.push(error));
  await service.listen();
  return service;
}

/** A real pooled connection for a flow; the test plays the agent's end. */
async function pooledPair(): Promise<ConnPair> {
  const pair = await connPair({ tls: false });
  pairs.push(pair);
  return pair;
}

/** The agent's end of a flow, echoing every datagram back. */
function echo(agentEnd: PoolConn, maxDatagram: number): void {
  // The relay ends a flow by destroying its connection, which the agent's end sees as an abnormal close.
  agentEnd.on('error', () => {});
  const batch = new DatagramBatch(agentEnd);
  readDatagrams(
    agentEnd,
    maxDatagram,
    (datagrams) => {
      for (const datagram of datagrams) batch.add(datagram);
    },
    (error) => {
      throw error;
    },
  );
}

/** A flow's connection whose agent end echoes every datagram back. */
async function echoingFlow(maxDatagram: number): Promise<PoolConn> {
  const pair = await pooledPair();
  echo(pair.client, maxDatagram);
  return pair.server;
}

/** Polls `condition` every 10 ms for at most 5 s. */
async function until(condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!condition() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
}

/** Sends `text` from `user` and resolves with the reply. */
async function exchange(user: Socket, port: number, text: string): Promise<string> {
  const reply = once(user, 'message');
  user.send(text, port, '127.0.0.1');
  return String((await reply)[0]);
}

describe('UdpService', () => {
  it('keeps a stalled flow from delaying another: the stalled one drops (backpressure), the other is answered in full', async () => {
    const agentEnds = new Map<number, PoolConn>();
    const stalledUser = await userSocket();
    const activeUser = await userSocket();
    const errors: Error[] = [];
    const udp = await startService(async (_service, source, maxDatagram) => {
      const pair = await pooledPair();
      agentEnds.set(source.port, pair.client);
      // The stalled flow's agent never reads: its connection backs up.
      if (source.port === stalledUser.address().port) pair.client.pause();
      else echo(pair.client, maxDatagram);
      return pair.server;
    }, errors);
    const port = udp.port();

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
    expect(udp.stats.udp.dropped.backpressure).toBeGreaterThan(0);
    expect(udp.stats.open).toBe(2);
    expect(errors).toEqual([]);
  }, 60_000);

  it('keeps at most 64 KiB of a flow while its connection is being claimed, and delivers what it kept in order', async () => {
    let release: () => void = () => {};
    const claimed = new Promise<void>((resolve) => (release = resolve));
    const user = await userSocket();
    const errors: Error[] = [];
    const udp = await startService(async (_service, _source, maxDatagram) => {
      await claimed;
      return echoingFlow(maxDatagram);
    }, errors);
    const replies: Buffer[] = [];
    user.on('message', (reply: Buffer) => replies.push(reply));
    const sent = [Buffer.alloc(30_000, 1), Buffer.alloc(30_000, 2), Buffer.alloc(30_000, 3), Buffer.alloc(10, 4)];
    for (const datagram of sent) user.send(datagram, udp.port(), '127.0.0.1');
    await until(() => udp.stats.udp.datagrams.fromUsers >= sent.length);
    expect(udp.stats.udp.dropped.queueFull).toBe(1);
    release();
    await until(() => replies.length >= 3);
    expect(replies.map((reply) => [reply.length, reply[0]])).toEqual([
      [30_000, 1],
      [30_000, 2],
      [10, 4],
    ]);
    expect(errors).toEqual([]);
  }, 30_000);

  it('ends a flow whose connection closes, and opens a new one for the next datagram', async () => {
    let opened = 0;
    const user = await userSocket();
    const errors: Error[] = [];
    const udp = await startService(async (_service, _source, maxDatagram) => {
      opened++;
      return echoingFlow(maxDatagram);
    }, errors);
    expect(await exchange(user, udp.port(), 'one')).toBe('one');
    pairs[0]!.client.destroy();
    await until(() => udp.stats.open === 0);
    expect(udp.stats).toMatchObject({ open: 0, finished: 1 });
    expect(await exchange(user, udp.port(), 'two')).toBe('two');
    expect(opened).toBe(2);
    expect(errors).toEqual([]);
  }, 30_000);

  it('turns an opener that fails into a flow without a connection: reported, counted, and the next datagram tries again', async () => {
    let attempts = 0;
    const user = await userSocket();
    const errors: Error[] = [];
    const udp = await startService(async (_service, _source, maxDatagram) => {
      if (++attempts === 1) throw new Error('no agent today');
      return echoingFlow(maxDatagram);
    }, errors);
    user.send('lost', udp.port(), '127.0.0.1');
    await until(() => udp.stats.failed === 1);
    expect(errors.map((error) => error.message)).toEqual(['no agent today']);
    expect(udp.stats.udp.dropped.noConnection).toBe(1);
    expect(udp.stats.open).toBe(0);
    expect(await exchange(user, udp.port(), 'again')).toBe('again');
    expect(attempts).toBe(2);
  }, 30_000);

  it('refuses a port in use with its listen error, and still releases its socket on close()', async () => {
    const taken = await userSocket();
    const udpHandles = (): number => process.getActiveResourcesInfo().filter((name) => name === 'UDPWrap').length;
    // The sockets of earlier tests finish closing first.
    await new Promise((resolve) => setTimeout(resolve, 50));
    const before = udpHandles();
    const udp = new UdpService({ name: 'u', agent: 'a', publicHost: '127.0.0.1', publicPort: taken.address().port, protocol: 'udp' }, async () => undefined, () => {});
    await expect(udp.listen()).rejects.toMatchObject({ code: 'EADDRINUSE' });
    udp.close();
    await until(() => udpHandles() === before);
    expect(udpHandles()).toBe(before);
  });

  it('a full table makes room: a new user closes the least recently active flow, and is answered', async () => {
    const udp = await startService(async (_service, _source, maxDatagram) => echoingFlow(maxDatagram), [], { maxFlows: 3, maxFlowsPerSource: 3 });
    const [a, b, c, d] = await Promise.all([userSocket(), userSocket(), userSocket(), userSocket()]);
    expect(await exchange(a!, udp.port(), 'a1')).toBe('a1');
    expect(await exchange(b!, udp.port(), 'b1')).toBe('b1');
    expect(await exchange(c!, udp.port(), 'c1')).toBe('c1');
    // a is active again: b is now the least recently active flow.
    expect(await exchange(a!, udp.port(), 'a2')).toBe('a2');
    expect(await exchange(d!, udp.port(), 'd1')).toBe('d1');
    expect(udp.stats.udp.flowsEvicted).toBe(1);
    expect(udp.stats.open).toBe(3);
    // b's flow went: its next datagram opens a new one (evicting c, now the least recent).
    expect(await exchange(b!, udp.port(), 'b2')).toBe('b2');
    expect(udp.stats.accepted).toBe(5);
    expect(udp.stats.udp.flowsEvicted).toBe(2);
  });

  it('one address holds at most its share of the table: its new flow replaces its own oldest, never another address\'s', async () => {
    // Every user here is 127.0.0.1, so the share is what one address gets: 2 of 4 flows.
    const udp = await startService(async (_service, _source, maxDatagram) => echoingFlow(maxDatagram), [], { maxFlows: 4, maxFlowsPerSource: 2 });
    const users = await Promise.all(Array.from({ length: 5 }, () => userSocket()));
    for (const [i, user] of users.entries()) expect(await exchange(user, udp.port(), `u${i}`)).toBe(`u${i}`);
    expect(udp.stats.open).toBe(2);
    expect(udp.stats.udp.flowsEvicted).toBe(3);
  });

  it('bounds what a flow sends its user by the bytes it heard (the reflection budget), and counts what it drops', async () => {
    // The agent's end answers every datagram with 100 times its size: a service's own amplification.
    const udp = await startService(
      async (_service, _source, maxDatagram) => {
        const pair = await pooledPair();
        const batch = new DatagramBatch(pair.client);
        readDatagrams(pair.client, maxDatagram, (datagrams) => {
          for (const datagram of datagrams) batch.add(Buffer.alloc(datagram.length * 100, 1));
        }, (error) => {
          throw error;
        });
        return pair.server;
      },
      [],
      { replyRatio: 10 },
    );
    const user = await userSocket();
    let received = 0;
    user.on('message', (data: Buffer) => (received += data.length));
    for (let i = 0; i < 20; i++) user.send(Buffer.alloc(10), udp.port(), '127.0.0.1');
    await until(() => udp.stats.udp.datagrams.toUsers + udp.stats.udp.dropped.replyBudget === 20);
    await until(() => received === udp.stats.udp.bytes.toUsers);
    // 200 bytes heard: at most 10 x 200 + the allowance go back, where the service would have sent 20,000.
    expect(received).toBeLessThanOrEqual(10 * 200 + REPLY_ALLOWANCE_BYTES);
    expect(received).toBeGreaterThan(0);
    expect(udp.stats.udp.dropped.replyBudget).toBeGreaterThan(0);
  });

  it('with replyRatio 0 the budget is off: every reply goes back', async () => {
    const udp = await startService(async (_service, _source, maxDatagram) => echoingFlow(maxDatagram), [], { replyRatio: 0 });
    const user = await userSocket();
    expect(await exchange(user, udp.port(), 'x'.repeat(5_000))).toBe('x'.repeat(5_000));
    expect(udp.stats.udp.dropped.replyBudget).toBe(0);
  });
});
