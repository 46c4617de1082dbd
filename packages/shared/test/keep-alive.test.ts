import { afterEach, describe, expect, it } from '@jest/globals';
import { once } from 'node:events';
import {
  DEAD_AFTER_PERIODS,
  KeepAliveSweeper,
  PING_AFTER_PERIODS,
  SWEEPS_PER_PERIOD,
  livenessAction,
  type LivenessAction,
} from '@pool/shared/internal';
import { connPair, type ConnPair } from '../../../tests/helpers/ws-pair.js';

let pair: ConnPair | undefined;
let sweeper: KeepAliveSweeper | undefined;

afterEach(async () => {
  sweeper?.close();
  await pair?.close();
  pair = sweeper = undefined;
});

describe('livenessAction', () => {
  it.each<[number, boolean, boolean, LivenessAction]>([
    [0, false, false, 'wait'],
    [0.99, false, false, 'wait'],
    [1, false, false, 'ping'],
    [1.49, false, true, 'ping'],
    [1.5, false, true, 'destroy'],
    [9, false, true, 'destroy'],
    // A sweep that came late asks before it judges.
    [1.5, false, false, 'ping'],
    [0, true, false, 'ping'],
    [9, true, true, 'ping'],
  ])('%p periods of silence, paused %p, pinged %p: %s', (silent, paused, pinged, action) => {
    expect(livenessAction(silent, paused, pinged)).toBe(action);
  });

  it('judges within two periods, and a peer is pinged at least one sweep before it is judged', () => {
    // The latest a silent peer is judged: the threshold plus one sweep.
    expect(DEAD_AFTER_PERIODS + 1 / SWEEPS_PER_PERIOD).toBeLessThanOrEqual(2);
    // The sweep before the one that judges saw at least a period of silence, and pinged.
    expect(DEAD_AFTER_PERIODS - 1 / SWEEPS_PER_PERIOD).toBeGreaterThanOrEqual(PING_AFTER_PERIODS);
  });
});

describe('KeepAliveSweeper', () => {
  it('keeps a connection whose peer answers pings', async () => {
    pair = await connPair({ tls: false });
    sweeper = new KeepAliveSweeper(50);
    sweeper.track(pair.client);
    let pings = 0;
    pair.server.webSocket.on('ping', () => pings++);
    // Counted rather than timed: a loaded machine stretches the sweeps, never
    // the rule that an answered ping keeps the connection.
    const deadline = Date.now() + 10_000;
    while (pings < 4 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 25));
    expect(pings).toBeGreaterThanOrEqual(4);
    expect(pair.client.destroyed).toBe(false);
    expect(sweeper.size).toBe(1);
  });

  it('skips its own ping when the peer pinged first, and still keeps the connection', async () => {
    pair = await connPair({ tls: false });
    sweeper = new KeepAliveSweeper(100);
    sweeper.track(pair.client);
    let ourPings = 0;
    pair.server.webSocket.on('ping', () => ourPings++);
    // The peer pings every 40 ms: more often than our sweep.
    const peerPinger = setInterval(() => pair!.server.webSocket.ping(), 40);
    try {
      await new Promise((resolve) => setTimeout(resolve, 550));
    } finally {
      clearInterval(peerPinger);
    }
    expect(ourPings).toBe(0);
    expect(pair.client.destroyed).toBe(false);
  });

  it('destroys a connection that misses a pong for a whole period, within two periods', async () => {
    pair = await connPair({ tls: false });
    // A peer that reads nothing answers no pings (as a Go npws idle connection).
    (pair.server.webSocket as unknown as { _autoPong: boolean })._autoPong = false;
    pair.server.on('error', () => {});
    sweeper = new KeepAliveSweeper(100);
    const started = Date.now();
    sweeper.track(pair.client);
    const [error] = await once(pair.client, 'error');
    expect(error).toMatchObject({ code: 'ERR_KEEPALIVE_TIMEOUT' });
    expect(Date.now() - started).toBeLessThan(2 * 100 + 100);
    expect(sweeper.size).toBe(0);
  });

  it.each([0, 37, 71, 99])('destroys a peer that goes silent %i ms into a period within two periods, whatever the phase', async (phaseMs) => {
    pair = await connPair({ tls: false });
    pair.server.on('error', () => {});
    pair.client.on('error', () => {});
    sweeper = new KeepAliveSweeper(100);
    sweeper.track(pair.client);
    // Answered for a while, then silent from a point in the middle of a period.
    await new Promise((resolve) => setTimeout(resolve, 300 + phaseMs));
    (pair.server.webSocket as unknown as { _autoPong: boolean })._autoPong = false;
    const silentAt = Date.now();
    await once(pair.client, 'error');
    // Two periods at most; on top, timer lateness on a loaded machine.
    expect(Date.now() - silentAt).toBeLessThanOrEqual(2 * 100 + 60);
  });

  it('never judges a paused socket (it cannot read pongs), and keeps pinging so that its peer hears it', async () => {
    pair = await connPair({ tls: false });
    (pair.server.webSocket as unknown as { _autoPong: boolean })._autoPong = false;
    sweeper = new KeepAliveSweeper(50);
    sweeper.track(pair.client);
    pair.client.webSocket.pause();
    let pings = 0;
    pair.server.webSocket.on('ping', () => pings++);
    await new Promise((resolve) => setTimeout(resolve, 400));
    expect(pair.client.destroyed).toBe(false);
    expect(pings).toBeGreaterThanOrEqual(6);
    pair.client.webSocket.resume();
  });

  it('runs one interval timer for any number of connections, stopped once emptied or closed', async () => {
    pair = await connPair({ tls: false });
    const realSetInterval = globalThis.setInterval;
    const realClearInterval = globalThis.clearInterval;
    const live = new Set<unknown>();
    globalThis.setInterval = ((fn: () => void, ms: number) => {
      const timer = realSetInterval(fn, ms);
      live.add(timer);
      return timer;
    }) as typeof setInterval;
    globalThis.clearInterval = ((timer: NodeJS.Timeout | undefined) => {
      live.delete(timer);
      realClearInterval(timer);
    }) as typeof clearInterval;
    try {
      sweeper = new KeepAliveSweeper(1_000);
      sweeper.track(pair.client);
      sweeper.track(pair.server);
      sweeper.track(pair.client);
      expect(live.size).toBe(1);
      expect(sweeper.size).toBe(2);
      sweeper.untrack(pair.client);
      sweeper.untrack(pair.server);
      expect(live.size).toBe(0);
      sweeper.track(pair.client);
      expect(live.size).toBe(1);
      sweeper.close();
      expect(live.size).toBe(0);
      expect(sweeper.size).toBe(0);
    } finally {
      globalThis.setInterval = realSetInterval;
      globalThis.clearInterval = realClearInterval;
    }
  });
});
