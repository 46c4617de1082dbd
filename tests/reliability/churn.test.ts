import { afterAll, describe, expect, it } from '@jest/globals';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { ClientPool } from '@pool/client';
import { ServerPool, type PooledConn } from '@pool/server';
import { recordFigure } from '../helpers/figures.js';
import { activeHandles, handlesAbove } from '../helpers/handles.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const PAIRS = Number(process.env.POOL_RELIABILITY_PAIRS ?? 10_000);

function heapAfterGc(): number {
  gc();
  gc();
  return process.memoryUsage().heapUsed;
}

const pools: Array<ServerPool | ClientPool> = [];
afterAll(async () => {
  await Promise.all(pools.map((pool) => pool.Close()));
});

/** One get/use/close cycle: both ends of one pooled connection, a byte each way, then closed. */
async function cycle(relay: ServerPool, agent: ClientPool, tally: { waited: number; present: number }, claimLate: boolean): Promise<void> {
  const { id, conn: relayEnd } = await relay.IncomingGet(5_000);
  // Half the claims wait for the ID to reach the agent first; the others race it.
  if (claimLate) await sleep(5);
  let resolvedBeforeIo = false;
  const claiming = agent.OutgoingGet(id, 5_000).then((conn) => {
    resolvedBeforeIo = true;
    return conn;
  });
  // The claim resolves before any I/O callback only if the ID had already arrived.
  await new Promise((resolve) => setImmediate(resolve));
  if (resolvedBeforeIo) tally.present++;
  else tally.waited++;
  const agentEnd: PooledConn = await claiming;
  relayEnd.write('r');
  agentEnd.write('a');
  const [[fromRelay], [fromAgent]] = (await Promise.all([once(agentEnd, 'data'), once(relayEnd, 'data')])) as [[Buffer], [Buffer]];
  if (fromRelay.toString() !== 'r' || fromAgent.toString() !== 'a') throw new Error(`crossed wires on ${id}`);
  const bothClosed = Promise.all([once(relayEnd, 'close'), once(agentEnd, 'close')]);
  agentEnd.resume();
  relayEnd.resume();
  relayEnd.end();
  await bothClosed;
}

describe('churn and leaks', () => {
  it(`${PAIRS} IncomingGet/OutgoingGet pairs, IDs arriving before and after the claim: zero orphans, no leak`, async () => {
    const baseline = activeHandles();
    const relay = new ServerPool({ host: '127.0.0.1', maxCap: 1_000, keepAlive: 5_000 });
    await relay.ServerManager();
    const agent = new ClientPool({ server: `ws://127.0.0.1:${relay.address()!.port}`, minCap: 32, maxCap: 128, minInterval: 5, maxInterval: 50, keepAlive: 5_000 });
    pools.push(relay, agent);
    agent.ClientManager();

    const tally = { waited: 0, present: 0 };
    let orphans = 0;
    const run = async (count: number): Promise<void> => {
      let next = 0;
      await Promise.all(
        Array.from({ length: 32 }, async () => {
          while (next < count) {
            next++;
            await cycle(relay, agent, tally, next % 2 === 0).catch(() => orphans++);
          }
        }),
      );
    };
    const warmup = Math.min(1_000, Math.floor(PAIRS / 10));
    await run(warmup);
    const heapWarm = heapAfterGc();
    const started = Date.now();
    await run(PAIRS - warmup);
    const seconds = (Date.now() - started) / 1000;
    const heapGrowth = heapAfterGc() - heapWarm;

    recordFigure('churn', 'pairs claimed / orphaned', `${tally.waited + tally.present - orphans} / ${orphans}`);
    recordFigure('churn', 'claims issued before the ID reached the agent / after', `${tally.waited} / ${tally.present}`);
    recordFigure('churn', 'get/use/close cycles per second (32 at a time, plain ws, one process)', Math.round((PAIRS - warmup) / seconds));
    recordFigure('leaks', `heap growth after GC across ${PAIRS - warmup} cycles`, (heapGrowth / 1024 / 1024).toFixed(2), 'MiB');
    expect(orphans).toBe(0);
    expect(tally.waited).toBeGreaterThan(0);
    expect(tally.present).toBeGreaterThan(0);
    expect(heapGrowth).toBeLessThan(5 * 1024 * 1024);

    await Promise.all([agent.Close(), relay.Close()]);
    const leftover = await handlesAbove(baseline);
    recordFigure('leaks', 'handles above the baseline after Close() of both pools', leftover.length === 0 ? 'none' : leftover.join(', '));
    expect(leftover).toEqual([]);
  }, 300_000);

  it('Close() on both pools leaves the event loop free to exit', async () => {
    const fixture = fileURLToPath(new URL('../../build/tests/fixtures/close-exits.js', import.meta.url));
    const child = spawn(process.execPath, [fixture], { stdio: ['ignore', 'pipe', 'inherit'] });
    let output = '';
    child.stdout.on('data', (data: Buffer) => (output += data.toString()));
    const started = Date.now();
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    const [code] = (await once(child, 'exit')) as [number | null];
    clearTimeout(timer);
    expect(output).toMatch(/^closed /);
    expect(code).toBe(0);
    recordFigure('leaks', 'child process exited by itself after Close() (200 cycles first)', Date.now() - started, 'ms');
  }, 30_000);
});
