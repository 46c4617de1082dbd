import { afterEach, describe, expect, it } from '@jest/globals';
import type { RemoteInfo, Socket as UdpSocket } from 'node:dgram';
import { FlowWriter, readDatagrams, type ReadFrame } from '@pool/shared/internal';
import { boundUdpSocket } from '../../../tests/helpers/udp.js';
import { connPair, type ConnPair } from '../../../tests/helpers/ws-pair.js';
import { FlowCarrier, type FlowCounters } from '../src/flow-carrier.js';

// The agent's end of a UDP carrier over a real pooled connection (the test
// plays the relay's end), in front of a real UDP echo.

const pairs: ConnPair[] = [];
const sockets: UdpSocket[] = [];

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.close();
  await Promise.all(pairs.splice(0).map((pair) => pair.close()));
});

/** Polls `condition` every 10 ms for at most 5 s. */
async function until(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !condition(); i++) await new Promise((resolve) => setTimeout(resolve, 10));
}

/** A UDP echo on 127.0.0.1 that remembers from which port each datagram came. */
async function echo(): Promise<{ port: number; senders: Set<number> }> {
  const socket = await boundUdpSocket();
  sockets.push(socket);
  const senders = new Set<number>();
  socket.on('message', (datagram: Buffer, from: RemoteInfo) => {
    senders.add(from.port);
    socket.send(datagram, from.port, from.address);
  });
  return { port: socket.address().port, senders };
}

/** A carrier running in front of `targetPort`; the relay's end writes frames with `relay` and collects what comes back in `frames`. */
async function carrier(targetPort: number): Promise<{ relay: FlowWriter; frames: ReadFrame[]; counters: FlowCounters; run: Promise<void>; pair: ConnPair }> {
  const pair = await connPair({ tls: false });
  pairs.push(pair);
  const counters: FlowCounters = { flowsOpen: 0, flowFailures: 0, datagramsDropped: { oversized: 0, backpressure: 0 } };
  // As the agent does once it claims a connection: its errors end it, and are the agent's to log.
  pair.client.on('error', () => {});
  const run = new FlowCarrier(pair.client, { address: '127.0.0.1', family: 4, port: targetPort }, 1_400, counters, () => {}).run(() => {});
  const frames: ReadFrame[] = [];
  pair.server.on('error', () => {});
  readDatagrams(pair.server, 1_400, (read) => frames.push(...read.map(({ flow, datagram }) => ({ flow, datagram: datagram && Buffer.from(datagram) }))), () => {});
  return { relay: new FlowWriter(pair.server), frames, counters, run, pair };
}

describe('FlowCarrier', () => {
  it('gives each flow number a socket of its own, and sends each reply back under the number that asked', async () => {
    const target = await echo();
    const { relay, frames, counters } = await carrier(target.port);
    relay.add(1, Buffer.from('one'));
    relay.add(2, Buffer.from('two'));
    relay.add(1, Buffer.from('one again'));
    await until(() => frames.length === 3);
    expect(frames.map(({ flow, datagram }) => `${flow}:${String(datagram)}`).sort()).toEqual(['1:one', '1:one again', '2:two']);
    expect(target.senders.size).toBe(2);
    expect(counters.flowsOpen).toBe(2);
  });

  it('closes a flow\'s socket on the relay\'s end of it; the same number later opens a new one', async () => {
    const target = await echo();
    const { relay, frames, counters } = await carrier(target.port);
    relay.add(7, Buffer.from('a'));
    await until(() => frames.length === 1);
    relay.end(7);
    await until(() => counters.flowsOpen === 0);
    expect(counters.flowsOpen).toBe(0);
    relay.add(7, Buffer.from('b'));
    await until(() => frames.length === 2);
    expect(String(frames[1]!.datagram)).toBe('b');
    expect(target.senders.size).toBe(2);
  });

  it('closes every flow\'s socket when the carrier closes, and its run ends', async () => {
    const target = await echo();
    const { relay, frames, counters, run, pair } = await carrier(target.port);
    for (let flow = 1; flow <= 5; flow++) relay.add(flow, Buffer.from(`f${flow}`));
    await until(() => frames.length === 5);
    expect(counters.flowsOpen).toBe(5);
    pair.server.destroy();
    await run;
    expect(counters.flowsOpen).toBe(0);
  });

  it('ends at once for a connection that closed before it ran (while the target was looked up)', async () => {
    const pair = await connPair({ tls: false });
    pairs.push(pair);
    pair.client.on('error', () => {});
    const closed = new Promise((resolve) => pair.client.once('close', resolve));
    pair.server.destroy();
    await closed;
    const counters: FlowCounters = { flowsOpen: 0, flowFailures: 0, datagramsDropped: { oversized: 0, backpressure: 0 } };
    await new FlowCarrier(pair.client, { address: '127.0.0.1', family: 4, port: 9 }, 1_400, counters, () => {}).run(() => {});
    expect(counters.flowsOpen).toBe(0);
  });

  it('drops a target reply over the maximum, and counts it', async () => {
    const target = await boundUdpSocket();
    sockets.push(target);
    target.on('message', (_datagram: Buffer, from: RemoteInfo) => target.send(Buffer.alloc(1_401), from.port, from.address));
    const { relay, frames, counters } = await carrier(target.address().port);
    relay.add(3, Buffer.from('grow'));
    await until(() => counters.datagramsDropped.oversized === 1);
    expect(counters.datagramsDropped.oversized).toBe(1);
    expect(frames).toEqual([]);
  });
});
