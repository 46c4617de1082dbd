import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { recordFigure } from '../helpers/figures.js';
import { HEAP_PROBE, startAgent, startRelay, type CliProcess } from '../helpers/processes.js';
import { REPLY, TargetServers, scriptedService, scriptedUser, type UserMode } from '../helpers/tunnel.js';

// 5,000 tunnels through the real CLIs, in every close order, 50 at a time:
// afterwards both processes are back to their warmed baseline in open
// tunnels, file descriptors and heap (after a full GC).

const TUNNELS = Number(process.env.POOL_SOAK_TUNNELS ?? 5_000);
const WARM_UP = 500;
const CONCURRENCY = 50;
/** Heap the processes may hold above their baseline after the soak: GC noise, not 5,000 tunnels' worth. */
const HEAP_SLACK = 4 * 1024 * 1024;
const MIXES: Array<[string, UserMode]> = [
  ['reply', 'end-after-reply'],
  ['reply-then-end', 'read-to-eof'],
  ['read-to-eof', 'half-close-then-read'],
  ['reply', 'destroy-before-reply'],
  ['reply', 'destroy-after-reply'],
  ['destroy-before', 'read-to-eof'],
  ['destroy-after', 'read-to-eof'],
];

const targets = new TargetServers();
let relay: CliProcess;
let agent: CliProcess;
let publicPort: number;

beforeAll(async () => {
  const target = await targets.listen(scriptedService());
  const started = await startRelay(['--status-interval', '100'], HEAP_PROBE);
  relay = started.relay;
  publicPort = started.publicPort;
  agent = await startAgent(started.port, target, ['--status-interval', '100', '--min-cap', '16', '--max-cap', '16'], true, HEAP_PROBE);
});

afterAll(async () => {
  await Promise.all([relay?.stop('SIGKILL'), agent?.stop('SIGKILL')]);
  targets.closeAll();
});

/** Runs `count` tunnels, `CONCURRENCY` at a time, cycling through the close orders. */
async function tunnels(count: number): Promise<number> {
  let next = 0;
  let short = 0;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < count) {
        const [targetMode, userMode] = MIXES[next++ % MIXES.length]!;
        const received = await scriptedUser(publicPort, targetMode, userMode);
        if (userMode !== 'destroy-before-reply' && targetMode !== 'destroy-before' && received !== REPLY.length) short++;
      }
    }),
  );
  return short;
}

/** Once nothing is open and both pools are full again: fds and heap of both processes. */
async function quiescent(): Promise<{ relayFds: number; agentFds: number; relayHeap: number; agentHeap: number }> {
  await relay.waitForStatus((s) => s.open === '0' && s.waiting === '0' && s.idle === '16/1024', 15_000);
  await agent.waitForStatus((s) => s.open === '0' && s.idle === '16', 15_000);
  return { relayFds: relay.fds(), agentFds: agent.fds(), relayHeap: await relay.heapUsed(), agentHeap: await agent.heapUsed() };
}

describe('soak', () => {
  it(`${TUNNELS} tunnels in every close order: tunnels, fds and heap back to the warmed baseline`, async () => {
    expect(await tunnels(WARM_UP)).toBe(0);
    const baseline = await quiescent();
    const started = Date.now();
    const short = await tunnels(TUNNELS);
    const seconds = (Date.now() - started) / 1000;
    const after = await quiescent();
    const mib = (bytes: number): string => (bytes / 2 ** 20).toFixed(1);
    recordFigure('soak', `${TUNNELS} tunnels in 7 close orders, ${CONCURRENCY} at a time`, seconds.toFixed(1), 's');
    recordFigure('soak', 'replies cut short', short);
    recordFigure('soak', 'relay fds: warmed baseline / after', `${baseline.relayFds} / ${after.relayFds}`);
    recordFigure('soak', 'agent fds: warmed baseline / after', `${baseline.agentFds} / ${after.agentFds}`);
    recordFigure('soak', 'relay heap after GC, MiB: warmed baseline / after', `${mib(baseline.relayHeap)} / ${mib(after.relayHeap)}`);
    recordFigure('soak', 'agent heap after GC, MiB: warmed baseline / after', `${mib(baseline.agentHeap)} / ${mib(after.agentHeap)}`);
    expect(short).toBe(0);
    expect(after.relayFds).toBeLessThanOrEqual(baseline.relayFds);
    expect(after.agentFds).toBeLessThanOrEqual(baseline.agentFds);
    expect(after.relayHeap).toBeLessThanOrEqual(baseline.relayHeap + HEAP_SLACK);
    expect(after.agentHeap).toBeLessThanOrEqual(baseline.agentHeap + HEAP_SLACK);
    const relayStatus = relay.latestStatus()!;
    expect(Number(relayStatus.accepted)).toBe(TUNNELS + WARM_UP);
    expect(Number(agent.latestStatus()!.finished)).toBe(Number(agent.latestStatus()!.orders));
  }, 240_000);
});
