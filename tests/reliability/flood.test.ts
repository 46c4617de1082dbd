import { afterEach, describe, expect, it } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { recordFigure } from '../helpers/figures.js';
import { CliProcess, startAgent, startRelay } from '../helpers/processes.js';
import { TargetServers, echoServer } from '../helpers/tunnel.js';

// An anonymous flood on a public port while the agent has no pooled
// connection to give: what the relay holds is bounded by its waiting caps,
// users beyond them are closed at once and counted, and memory comes back.

const TOKEN = 'flood-token-0123456789abcdef';
const USERS = 10_000;
const PAYLOAD = Buffer.alloc(64 * 1024, 0x61);
const processes: CliProcess[] = [];
const controls: WebSocket[] = [];

afterEach(async () => {
  for (const ws of controls.splice(0)) ws.terminate();
  await Promise.all(processes.splice(0).map((p) => p.stop('SIGKILL')));
});

const rss = (cli: CliProcess): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${cli.child.pid}/status`, 'utf8'))![1]) * 1024;

/** An agent that holds its control channel (and answers pings) but never dials a pooled connection: every user waits. */
async function agentWithoutPool(port: number): Promise<void> {
  const ws = new WebSocket(`wss://127.0.0.1:${port}/control`, {
    rejectUnauthorized: false,
    perMessageDeflate: false,
    headers: { 'x-pool-token': TOKEN, 'x-pool-agent-id': randomUUID(), 'x-pool-control-features': 'claimed,demand,session' },
  });
  ws.on('error', () => {});
  controls.push(ws);
  await once(ws, 'message');
}

/** `count` users that each connect and send 64 KiB (the same buffer, so this process holds one copy). */
async function flood(publicPort: number, count: number): Promise<Socket[]> {
  const sockets: Socket[] = [];
  for (let i = 0; i < count; i++) {
    const socket = connect(publicPort, '127.0.0.1');
    socket.on('error', () => {});
    socket.write(PAYLOAD);
    sockets.push(socket);
    // Bounded pace: the kernel's accept queue and this process's own loop get a turn.
    if (i % 500 === 499) await sleep(20);
  }
  return sockets;
}

describe('a flood of users while no pooled connection is free', () => {
  it.each([
    ['from one address, the defaults (the waiting list, 1,024, refuses the rest)', [], 1_024],
    ['from one address with --max-waiting-per-source 512 (the rest refused)', ['--max-waiting-per-source', '512'], 512],
  ] as Array<[string, string[], number]>)('%s: bounded memory, the rest closed at once and counted', async (_label, args, cap) => {
    const { relay, port, publicPort } = await startRelay(['--token', TOKEN, '--get-timeout', '3000', '--status-interval', '200', ...args]);
    processes.push(relay);
    await agentWithoutPool(port);
    await relay.waitForStatus((s) => s.agent === 'up', 5_000);
    const before = rss(relay);
    const sockets = await flood(publicPort, USERS);
    const during = await relay.waitForStatus((s) => Number(s['refused-busy']) >= USERS - cap, 30_000);
    const peak = rss(relay);
    // Every waiting place was taken and no more: the rest were refused.
    expect(Number(during.waiting)).toBeLessThanOrEqual(cap);
    expect(Number(during['refused-busy'])).toBe(USERS - cap);
    recordFigure('flood', `${USERS} users x 64 KiB, cap ${cap}: relay RSS before / at the peak`, `${Math.round(before / 2 ** 20)} / ${Math.round(peak / 2 ** 20)}`, 'MiB');
    expect(peak - before).toBeLessThan(128 * 2 ** 20);
    // Those that waited are closed at the get timeout; nothing is left waiting.
    const after = await relay.waitForStatus((s) => Number(s.waiting) === 0 && Number(s['no-connection']) >= cap && Number(s.open) === 0, 30_000);
    expect(Number(after.open)).toBe(0);
    for (const socket of sockets) socket.destroy();
    recordFigure('flood', `${USERS} users x 64 KiB, cap ${cap}: relay RSS after they were gone`, Math.round(rss(relay) / 2 ** 20), 'MiB');
  }, 90_000);
});

describe('tunnels from one address (--max-tunnels-per-source)', () => {
  it('an address at its cap is closed at once and counted; a tunnel that ends gives its place back', async () => {
    const targets = new TargetServers();
    try {
      const target = await targets.listen(echoServer());
      const { relay, port, publicPort } = await startRelay(['--token', TOKEN, '--max-tunnels-per-source', '3', '--status-interval', '100']);
      processes.push(relay);
      const agent = await startAgent(port, target, ['--token', TOKEN, '--min-cap', '8']);
      processes.push(agent);
      /** A user that connects and says hello; resolves with its socket once echoed, or undefined when closed first. */
      const hello = (): Promise<Socket | undefined> =>
        new Promise((resolve) => {
          const socket = connect(publicPort, '127.0.0.1');
          socket.on('error', () => {});
          socket.once('close', () => resolve(undefined));
          socket.once('data', () => resolve(socket));
          socket.write('hello');
        });
      const open = [await hello(), await hello(), await hello()];
      expect(open.every((socket) => socket !== undefined)).toBe(true);
      expect(await hello()).toBeUndefined();
      await relay.waitForStatus((s) => s['refused-busy'] === '1', 5_000);
      open[0]!.destroy();
      await relay.waitForStatus((s) => s.open === '2', 5_000);
      const next = await hello();
      expect(next).toBeDefined();
      for (const socket of [...open, next]) socket?.destroy();
    } finally {
      targets.closeAll();
    }
  }, 30_000);
});

describe('a flood from one address that fills the waiting list', () => {
  it('does not lock another address out: its user takes the place of the flood\'s newest, which is closed and counted', async () => {
    const { relay, port, publicPort } = await startRelay(['--token', TOKEN, '--max-waiting', '100', '--get-timeout', '20000', '--status-interval', '100']);
    processes.push(relay);
    await agentWithoutPool(port);
    await relay.waitForStatus((s) => s.agent === 'up', 5_000);
    const flooders = await flood(publicPort, 150);
    await relay.waitForStatus((s) => s.waiting === '100' && s['refused-busy'] === '50', 10_000);
    const closedAt = (socket: Socket): Promise<boolean> => new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), 1_000);
      socket.once('close', () => {
        clearTimeout(timer);
        resolve(true);
      });
    });
    const honest = connect({ port: publicPort, host: '127.0.0.1', localAddress: '127.0.0.2' });
    honest.on('error', () => {});
    const honestClosed = closedAt(honest);
    await relay.waitForStatus((s) => s['refused-busy'] === '51', 5_000);
    // The honest user waits (for a pooled connection that this agent never dials); one of the flood's left in its place.
    expect(await honestClosed).toBe(false);
    expect(relay.latestStatus()!.waiting).toBe('100');
    honest.destroy();
    for (const socket of flooders) socket.destroy();
  }, 30_000);
});
