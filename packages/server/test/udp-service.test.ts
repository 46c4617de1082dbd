import { afterEach, describe, expect, it } from '@jest/globals';
import type { Socket } from 'node:dgram';
import { once } from 'node:events';
import { FlowWriter, readDatagrams, type PoolConn, type ReadFrame } from '@pool/shared/internal';
import { boundUdpSocket } from '../../../tests/helpers/udp.js';
import { connPair, type ConnPair } from '../../../tests/helpers/ws-pair.js';
import { REPLY_ALLOWANCE_BYTES, UdpService, type FlowOpener } from '../src/relay/udp-service.js';
import type { UdpOptions } from '../src/relay/relay-config.js';

// A UdpService whose carriers are real pooled connections (PoolConn pairs over
// a real WebSocket), the agent's end of each played by the test.

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

/** A listening UdpService on 127.0.0.1 whose carriers come from `openCarrier`; errors it reports are kept in `errors`. */
async function startService(openCarrier: FlowOpener, errors: Error[] = [], udp: UdpOptions = {}): Promise<UdpService> {
  service = new UdpService({ name: 'u', agent: 'a', publicHost: '127.0.0.1', publicPort: 0, protocol: 'udp', udp }, openCarrier, (error) => errors.push(error));
  await service.listen();
  return service;
}

/** A real pooled connection for a carrier; the test plays the agent's end. */
async function pooledPair(): Promise<ConnPair> {
  const pair = await connPair({ tls: false });
  pairs.push(pair);
  return pair;
}

/**
 * The agent's end of a carrier, answering each datagram with what `answer`
 * makes of it (default: the datagram itself) under the same flow number; the
 * relay's flow-ends are kept in `ended`.
 */
function agentEnd(conn: PoolConn, maxDatagram: number, answer: (datagram: Buffer) => Buffer = (datagram) => datagram, ended: number[] = []): void {
  // The relay ends a carrier by destroying its connection, which the agent's end sees as an abnormal close.
  conn.on('error', () => {});
  const writer = new FlowWriter(conn);
  readDatagrams(
    conn,
    maxDatagram,
    (frames: ReadFrame[]) => {
      for (const { flow, datagram } of frames) {
        if (datagram === undefined) ended.push(flow);
        else writer.add(flow, answer(datagram));
      }
    },
    (error) => {
      throw error;
    },
  );
}

/** A carrier whose agent end echoes every datagram back. */
async function echoingCarrier(maxDatagram: number): Promise<PoolConn> {
  const pair = await pooledPair();
  agentEnd(pair.client, maxDatagram);
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
  it('carries many users on a few pooled connections: 200 users, each answered with its own datagrams, on at most 4', async () => {
    let opened = 0;
    const udp = await startService(
      async (_service, maxDatagram) => {
        opened++;
        return echoingCarrier(maxDatagram);
      },
      [],
      // Every user here is 127.0.0.1.
      { maxFlowsPerSource: 200 },
    );
    const users = await Promise.all(Array.from({ length: 200 }, () => userSocket()));
    const replies = await Promise.all(users.map((user, i) => exchange(user, udp.port(), `user ${i}`)));
    expect(replies).toEqual(users.map((_user, i) => `user ${i}`));
    expect(opened).toBeGreaterThanOrEqual(1);
    expect(opened).toBeLessThanOrEqual(4);
    expect(udp.stats.udp.carriers).toBe(opened);
    expect(udp.stats.open).toBe(200);
  }, 30_000);

  it('keeps a flooding flow from starving another on its carrier: the flood drops (backpressure), the other is answered in full', async () => {
    const flooder = await userSocket();
    const activeUser = await userSocket();
    const errors: Error[] = [];
    const udp = await startService(async (_service, maxDatagram) => {
      const pair = await pooledPair();
      agentEnd(pair.client, maxDatagram);
      // A slow agent: the carrier backs up at the relay, and the flows take turns.
      pair.client.on('data', () => {
        pair.client.pause();
        setTimeout(() => pair.client.resume(), 5);
      });
      return pair.server;
    }, errors);
    const port = udp.port();
    expect(await exchange(activeUser, port, 'first')).toBe('first');

    const flood = Buffer.alloc(1_000, 0x66);
    let flooding = true;
    flooder.on('message', () => {});
    const floodDone = (async () => {
      for (let round = 0; round < 200 && flooding; round++) {
        for (let i = 0; i < 500; i++) flooder.send(flood, port, '127.0.0.1');
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
    expect(udp.stats.udp.carriers).toBe(1);
    expect(udp.stats.udp.dropped.backpressure).toBeGreaterThan(0);
    expect(udp.stats.open).toBe(2);
    expect(errors).toEqual([]);
  }, 60_000);

  it('keeps at most 64 KiB of a flow while its carrier is being claimed, and delivers what it kept in order', async () => {
    let release: () => void = () => {};
    const claimed = new Promise<void>((resolve) => (release = resolve));
    const user = await userSocket();
    const errors: Error[] = [];
    const udp = await startService(async (_service, maxDatagram) => {
      await claimed;
      return echoingCarrier(maxDatagram);
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

  it('ends the flows of a carrier that closes, and opens a new carrier for the next datagram', async () => {
    let opened = 0;
    const user = await userSocket();
    const errors: Error[] = [];
    const udp = await startService(async (_service, maxDatagram) => {
      opened++;
      return echoingCarrier(maxDatagram);
    }, errors);
    expect(await exchange(user, udp.port(), 'one')).toBe('one');
    pairs[0]!.client.destroy();
    await until(() => udp.stats.open === 0);
    expect(udp.stats).toMatchObject({ open: 0, finished: 1 });
    expect(udp.stats.udp.carriers).toBe(0);
    expect(await exchange(user, udp.port(), 'two')).toBe('two');
    expect(opened).toBe(2);
    expect(errors).toEqual([]);
  }, 30_000);

  it('turns an opener that fails into flows without a carrier: reported, counted, and the next datagram tries again', async () => {
    let attempts = 0;
    const user = await userSocket();
    const errors: Error[] = [];
    const udp = await startService(async (_service, maxDatagram) => {
      if (++attempts === 1) throw new Error('no agent today');
      return echoingCarrier(maxDatagram);
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

  it('a full table makes room: a new user closes the least recently active flow (the agent is told), and is answered', async () => {
    const ended: number[] = [];
    const udp = await startService(
      async (_service, maxDatagram) => {
        const pair = await pooledPair();
        agentEnd(pair.client, maxDatagram, undefined, ended);
        return pair.server;
      },
      [],
      { maxFlows: 3, maxFlowsPerSource: 3 },
    );
    const [a, b, c, d] = await Promise.all([userSocket(), userSocket(), userSocket(), userSocket()]);
    expect(await exchange(a!, udp.port(), 'a1')).toBe('a1');
    expect(await exchange(b!, udp.port(), 'b1')).toBe('b1');
    expect(await exchange(c!, udp.port(), 'c1')).toBe('c1');
    // a is active again: b (flow 2) is now the least recently active flow.
    expect(await exchange(a!, udp.port(), 'a2')).toBe('a2');
    expect(await exchange(d!, udp.port(), 'd1')).toBe('d1');
    expect(udp.stats.udp.flowsEvicted).toBe(1);
    expect(udp.stats.open).toBe(3);
    expect(ended).toEqual([2]);
    // b's flow went: its next datagram opens a new one (evicting c, now the least recent).
    expect(await exchange(b!, udp.port(), 'b2')).toBe('b2');
    expect(udp.stats.accepted).toBe(5);
    expect(udp.stats.udp.flowsEvicted).toBe(2);
    expect(ended).toEqual([2, 3]);
    expect(udp.stats.udp.carriers).toBe(1);
  });

  it("one address holds at most its share of the table: its new flow replaces its own oldest, never another address's", async () => {
    // Every user here is 127.0.0.1, so the share is what one address gets: 2 of 4 flows.
    const udp = await startService(async (_service, maxDatagram) => echoingCarrier(maxDatagram), [], { maxFlows: 4, maxFlowsPerSource: 2 });
    const users = await Promise.all(Array.from({ length: 5 }, () => userSocket()));
    for (const [i, user] of users.entries()) expect(await exchange(user, udp.port(), `u${i}`)).toBe(`u${i}`);
    expect(udp.stats.open).toBe(2);
    expect(udp.stats.udp.flowsEvicted).toBe(3);
  });

  it("ends a flow the agent ends, and answers with an end, so that a socket its late datagrams opened there closes too", async () => {
    let agentConn: PoolConn | undefined;
    const ended: number[] = [];
    const udp = await startService(async (_service, maxDatagram) => {
      const pair = await pooledPair();
      agentConn = pair.client;
      agentEnd(pair.client, maxDatagram, undefined, ended);
      return pair.server;
    });
    const user = await userSocket();
    expect(await exchange(user, udp.port(), 'hello')).toBe('hello');
    expect(udp.stats.open).toBe(1);
    new FlowWriter(agentConn!).end(1);
    await until(() => udp.stats.open === 0);
    await until(() => ended.length > 0);
    expect(ended).toEqual([1]);
    expect(await exchange(user, udp.port(), 'again')).toBe('again');
    expect(udp.stats.accepted).toBe(2);
  });

  it('gives an unused carrier back after the idle timeout', async () => {
    const udp = await startService(async (_service, maxDatagram) => echoingCarrier(maxDatagram), [], { idleTimeout: 200 });
    const user = await userSocket();
    expect(await exchange(user, udp.port(), 'x')).toBe('x');
    expect(udp.stats.udp.carriers).toBe(1);
    const carrierClosed = new Promise((resolve) => pairs[0]!.client.once('close', resolve));
    await until(() => udp.stats.udp.carriers === 0);
    expect(udp.stats).toMatchObject({ open: 0, finished: 1 });
    await carrierClosed;
  });

  it('bounds what a flow sends its user by the bytes it heard (the reflection budget), and counts what it drops', async () => {
    // The agent's end answers every datagram with 100 times its size: a service's own amplification.
    const udp = await startService(
      async (_service, maxDatagram) => {
        const pair = await pooledPair();
        agentEnd(pair.client, maxDatagram, (datagram) => Buffer.alloc(datagram.length * 100, 1));
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
    const udp = await startService(async (_service, maxDatagram) => echoingCarrier(maxDatagram), [], { replyRatio: 0 });
    const user = await userSocket();
    expect(await exchange(user, udp.port(), 'x'.repeat(5_000))).toBe('x'.repeat(5_000));
    expect(udp.stats.udp.dropped.replyBudget).toBe(0);
  });
});
