import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { Pool } from 'undici';
import { cpuMsOf } from './burst.js';
import { ROOT, nodeTlsPipe, sendToSink, sleep, spawnUntil } from './lib.js';

/** One system's data plane: the pair, or the Node TLS pipe, between a user and its target. */
export interface DataPlaneFigures {
  /** One tunnel, user to target, best of the rounds, in MB/s. */
  bulkMBps: number;
  /** CPU of both processes per GB carried, in s. */
  cpuSecondsPerGB: number;
  /** 50 keep-alive HTTP users (1 KiB bodies), in requests/s. */
  httpRps: number;
  /** Both processes' resident memory, idle, after start, in bytes. */
  idleRss: number;
  /** The same, idle again after the bulk rounds: the code a connection runs has been paged in, as in a pair that has served. */
  rssAfterUse: number;
}

/** The agent's `--min-cap` default: the pooled connections an idle pair holds. */
const DEFAULT_POOL_SIZE = 128;

const rssOf = (pid: number): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) * 1024;
const cpuOf = (pids: number[]): number => pids.reduce((sum, pid) => sum + (cpuMsOf(pid) ?? 0), 0);

/** Sends `bytes` through `port` to the sink; MB/s until the sink says it has them all, and the CPU `pids` used meanwhile. */
async function bulk(port: number, bytes: number, pids: number[]): Promise<{ mbps: number; cpuMs: number }> {
  const cpuBefore = cpuOf(pids);
  const mbps = await sendToSink(port, bytes);
  return { mbps, cpuMs: cpuOf(pids) - cpuBefore };
}

/** 50 keep-alive users for `seconds`; requests per second. */
async function http(port: number, seconds: number): Promise<number> {
  const pool = new Pool(`http://127.0.0.1:${port}`, { connections: 50 });
  let done = 0;
  const deadline = performance.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: 50 }, async () => {
      while (performance.now() < deadline) {
        const response = await pool.request({ path: '/', method: 'GET' });
        await response.body.arrayBuffer();
        done++;
      }
    }),
  );
  await pool.close();
  return done / seconds;
}

/**
 * Waits (at most 10 s) until `pids` together use under 5% of a core over a
 * quarter of a second: a system measured while it still sets itself up (the
 * pair fills its pool: 128 TLS handshakes on both sides) would be charged for it.
 */
async function quiet(pids: number[]): Promise<void> {
  for (let waited = 0; waited < 10_000; waited += 250) {
    const before = cpuOf(pids);
    await sleep(250);
    if (cpuOf(pids) - before < 0.05 * 250) return;
  }
}

type Started = { port: number; pids: number[]; kill: () => void };
type Starter = (target: number) => Promise<Started>;

/**
 * Every system's figures, measured in turns (system after system, round after
 * round) so that a change in the machine's load meets them all alike; the best
 * round of each counts. Each is first quiet (its set-up done) and warmed.
 */
async function figures<K extends string>(starters: Record<K, Starter>, targets: { sink: number; web: number }, bytes: number, rounds: number, httpSeconds: number): Promise<Record<K, DataPlaneFigures>> {
  const names = Object.keys(starters) as K[];
  const startAll = async (target: number): Promise<Record<K, Started>> => {
    const started = {} as Record<K, Started>;
    for (const name of names) started[name] = await starters[name](target);
    for (const name of names) await quiet(started[name].pids);
    return started;
  };
  const figuresOf = {} as Record<K, DataPlaneFigures>;
  for (const name of names) figuresOf[name] = { bulkMBps: 0, cpuSecondsPerGB: 0, httpRps: 0, idleRss: 0, rssAfterUse: 0 };
  const toSink = await startAll(targets.sink);
  try {
    for (const name of names) figuresOf[name].idleRss = toSink[name].pids.reduce((sum, pid) => sum + rssOf(pid), 0);
    for (let round = 0; round < rounds; round++) {
      for (const name of names) {
        const { mbps, cpuMs } = await bulk(toSink[name].port, bytes, toSink[name].pids);
        if (mbps > figuresOf[name].bulkMBps) Object.assign(figuresOf[name], { bulkMBps: mbps, cpuSecondsPerGB: cpuMs / 1000 / (bytes / 1e9) });
      }
    }
    for (const name of names) {
      await quiet(toSink[name].pids);
      figuresOf[name].rssAfterUse = toSink[name].pids.reduce((sum, pid) => sum + rssOf(pid), 0);
    }
  } finally {
    for (const name of names) toSink[name].kill();
  }
  const toWeb = await startAll(targets.web);
  try {
    // Warmed first, as a server is in its steady state: the code paths compiled.
    for (const name of names) await http(toWeb[name].port, 1);
    for (let round = 0; round < rounds; round++) {
      for (const name of names) figuresOf[name].httpRps = Math.max(figuresOf[name].httpRps, await http(toWeb[name].port, httpSeconds));
    }
  } finally {
    for (const name of names) toWeb[name].kill();
  }
  return figuresOf;
}

/**
 * Both processes' RSS of a Node TLS pipe holding `count` idle tunnels (a user
 * connected, a TLS connection between the processes, the target connected),
 * once quiet: as many TLS connections, handshakes done, as the pair's pool
 * holds when idle.
 */
async function pipeHolding(target: number, count: number): Promise<number> {
  const pipe = await nodeTlsPipe(target);
  const users: Socket[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const user = connect(pipe.port, '127.0.0.1');
      user.on('error', () => {});
      users.push(user);
    }
    await Promise.all(users.map((user) => new Promise((resolve) => user.once('connect', resolve))));
    await quiet(pipe.pids);
    return pipe.pids.reduce((sum, pid) => sum + rssOf(pid), 0);
  } finally {
    for (const user of users) user.destroy();
    pipe.kill();
  }
}

/** The pair with the CLIs' defaults (TLS between them, self-signed) but the agent's `--transport`, in front of `target`. */
async function pair(transport: 'tls' | 'wss', target: number): Promise<Started> {
  const relay = await spawnUntil(
    [`${ROOT}packages/server/dist/bin/pool-relay.js`, '--host', '127.0.0.1', '--public-host', '127.0.0.1', '--port', '0', '--public-port', '0', '--token', 'bench-pipe-token-0123456789', '--status-interval', '0', '--log-level', 'error'],
    / ready port=(\d+) public-port=(\d+)/,
  );
  const agent = await spawnUntil(
    [`${ROOT}packages/client/dist/bin/pool-agent.js`, '--server', `127.0.0.1:${relay.match[1]}`, '--target', `127.0.0.1:${target}`, '--tls', 'insecure', '--transport', transport, '--token', 'bench-pipe-token-0123456789', '--status-interval', '0', '--log-level', 'error'],
    /control connected/,
  );
  return {
    port: Number(relay.match[2]),
    pids: [relay.child.pid!, agent.child.pid!],
    kill: () => {
      agent.child.kill('SIGKILL');
      relay.child.kill('SIGKILL');
    },
  };
}

/**
 * 11. The data plane beside its floor: the pair (CLIs with their defaults,
 * on each transport) and the Node TLS pipe (two processes that only pipe, TLS 1.3 between them),
 * each in front of the same targets: one tunnel's bulk throughput and the CPU
 * both processes spend per GB, 50 keep-alive HTTP users, idle memory.
 */
export async function besideTlsPipe(bytes: number, rounds: number, httpSeconds: number): Promise<{ tls: DataPlaneFigures; wss: DataPlaneFigures; pipe: DataPlaneFigures; pipeHoldingRss: number }> {
  const targets = await spawnUntil(
    [
      '-e',
      `const net = require('node:net'); const http = require('node:http');
      const sink = net.createServer((s) => { let n = 0; s.on('error', () => {}); s.on('data', (d) => { n += d.length; if (n >= ${bytes}) { n = 0; s.write('done'); } }); });
      const web = http.createServer((q, r) => r.end('x'.repeat(1024)));
      sink.listen(0, '127.0.0.1', () => web.listen(0, '127.0.0.1', () => console.log('ports=' + sink.address().port + ',' + web.address().port)));`,
    ],
    /ports=(\d+),(\d+)/,
  );
  const ports = { sink: Number(targets.match[1]), web: Number(targets.match[2]) };
  try {
    const systems = await figures({ tls: (target) => pair('tls', target), wss: (target) => pair('wss', target), pipe: (target) => nodeTlsPipe(target) }, ports, bytes, rounds, httpSeconds);
    return { ...systems, pipeHoldingRss: await pipeHolding(ports.sink, DEFAULT_POOL_SIZE) };
  } finally {
    targets.child.kill('SIGKILL');
  }
}
