import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { ROOT, nodeTlsPipe, percentile, plainForwarders, sleep, spawnUntil } from './lib.js';

/** One burst: N users at the same instant, each timed from connect() to the first byte back. */
export interface BurstOutcome {
  ok: number;
  failed: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  /** Times to first byte of the users served, sorted, in ms. */
  sorted: number[];
  /**
   * Connections the kernel dropped during the burst because a listen queue was full (`ListenOverflows`, for the
   * whole machine); each costs its user a 1 s SYN retransmit. Undefined off Linux.
   */
  listenOverflows: number | undefined;
}

export interface BurstRow {
  users: number;
  /** `cold`: right after the agent connected; `warm`: 10 s after the cold burst. */
  phase: 'cold' | 'warm';
  tunnel: BurstOutcome;
  direct: BurstOutcome;
  /** CPU time the relay and the agent used during the tunnel burst, in ms; undefined where `/proc` is not there to read it. */
  cpuMs: { relay: number; agent: number } | undefined;
  /**
   * Cold only: the same burst through one and through two plain TCP forwarders in fresh Node processes (no TLS, no
   * WebSocket, no pool), each followed by its own direct burst: the floor under any relay and agent written in Node.
   */
  floors: BurstFloor[];
  /**
   * The same burst through the Node TLS pipe (two processes that only pipe, a fresh TLS 1.3 connection between
   * them per user), cold in new processes and warm 10 s later, with the relay and the agent gone.
   */
  tlsPipe: BurstOutcome | undefined;
}

export interface BurstFloor {
  hops: 1 | 2;
  forwarded: BurstOutcome;
  direct: BurstOutcome;
}

/** CPU time (user and system, all threads) a process has used, in ms, from `/proc`; undefined off Linux. */
export function cpuMsOf(pid: number | undefined): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // After the command name, which may hold spaces: utime and stime are the 12th and 13th fields, in clock ticks (100/s).
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return undefined;
  }
}

/** The kernel's count of connections dropped on a full listen queue, from `/proc`; undefined off Linux. */
function listenOverflows(): number | undefined {
  try {
    const [names, values] = readFileSync('/proc/net/netstat', 'utf8')
      .split('\n')
      .filter((line) => line.startsWith('TcpExt:'))
      .map((line) => line.split(' '));
    const index = names?.indexOf('ListenOverflows') ?? -1;
    return index === -1 ? undefined : Number(values?.[index]);
  } catch {
    return undefined;
  }
}

/** Gives up on a user after this long, in ms: far beyond any timeout of ours. */
const USER_LIMIT_MS = 15_000;

/** `users` connections at once to `port`; each writes a few bytes and waits for the first one back. */
export async function burstAt(port: number, users: number): Promise<BurstOutcome> {
  const overflowsBefore = listenOverflows();
  const times = await Promise.all(
    Array.from(
      { length: users },
      () =>
        new Promise<number | undefined>((resolve) => {
          const started = performance.now();
          const socket = connect(port, '127.0.0.1');
          const done = (time: number | undefined): void => {
            clearTimeout(limit);
            socket.destroy();
            resolve(time);
          };
          const limit = setTimeout(() => done(undefined), USER_LIMIT_MS);
          socket.setNoDelay(true);
          socket.on('error', () => done(undefined));
          socket.once('close', () => done(undefined));
          socket.once('data', () => done(performance.now() - started));
          socket.write('ping\n');
        }),
    ),
  );
  const sorted = times.filter((time): time is number => time !== undefined).sort((a, b) => a - b);
  const overflowsAfter = listenOverflows();
  return {
    ok: sorted.length,
    failed: users - sorted.length,
    p50: percentile(sorted, 0.5),
    p90: percentile(sorted, 0.9),
    p99: percentile(sorted, 0.99),
    max: sorted.at(-1) ?? Number.NaN,
    sorted,
    listenOverflows: overflowsBefore === undefined || overflowsAfter === undefined ? undefined : overflowsAfter - overflowsBefore,
  };
}

/** A cold burst of `users` through one, then through two, fresh plain forwarders to `targetPort`, each followed by the same burst direct. */
async function floorBursts(targetPort: number, users: number): Promise<BurstFloor[]> {
  const floors: BurstFloor[] = [];
  for (const hops of [1, 2] as const) {
    const forwarders = await plainForwarders(targetPort, hops);
    try {
      await sleep(300);
      const forwarded = await burstAt(forwarders.port, users);
      floors.push({ hops, forwarded, direct: await burstAt(targetPort, users) });
    } finally {
      forwarders.kill();
    }
  }
  return floors;
}

/**
 * 7. Bursts of new users: for each N, a fresh relay and agent (the CLIs with
 * their defaults, self-signed TLS between them, each its own process) and an
 * echo target like a typical service (Node's default backlog, its own
 * process). N users hit the relay's public port at the same instant right
 * after the agent connected (cold), and again 10 s later (warm); each burst is
 * followed by the same N straight to the target. Then the cold burst's floors
 * (see `BurstRow.floors`), with the relay and the agent gone.
 */
export async function bursts(sizes: number[], warmAfterMs = 10_000, flags: { relay?: string[]; agent?: string[] } = {}): Promise<BurstRow[]> {
  const target = await spawnUntil(
    ['-e', `require('node:net').createServer((s) => { s.on('error', () => {}); s.pipe(s); }).listen(0, '127.0.0.1', function () { console.log('port=' + this.address().port); });`],
    /port=(\d+)/,
  );
  const targetPort = Number(target.match[1]);
  const rows: BurstRow[] = [];
  try {
    for (const users of sizes) {
      const relay = await spawnUntil(
        [`${ROOT}packages/server/dist/bin/pool-relay.js`, '--host', '127.0.0.1', '--public-host', '127.0.0.1', '--port', '0', '--public-port', '0', '--status-interval', '0', '--log-level', 'warn', ...(flags.relay ?? [])],
        / ready port=(\d+) public-port=(\d+)/,
      );
      const [port, publicPort] = [Number(relay.match[1]), Number(relay.match[2])];
      const agent = await spawnUntil(
        [`${ROOT}packages/client/dist/bin/pool-agent.js`, '--server', `127.0.0.1:${port}`, '--target', `127.0.0.1:${targetPort}`, '--tls', 'insecure', '--status-interval', '0', '--log-level', 'warn', ...(flags.agent ?? [])],
        /control connected/,
      );
      const cpuNow = (): { relay: number; agent: number } | undefined => {
        const [relayMs, agentMs] = [cpuMsOf(relay.child.pid), cpuMsOf(agent.child.pid)];
        return relayMs === undefined || agentMs === undefined ? undefined : { relay: relayMs, agent: agentMs };
      };
      const tunnelBurst = async (): Promise<{ tunnel: BurstOutcome; cpuMs: BurstRow['cpuMs'] }> => {
        const before = cpuNow();
        const tunnel = await burstAt(publicPort, users);
        const after = cpuNow();
        return { tunnel, cpuMs: before && after && { relay: after.relay - before.relay, agent: after.agent - before.agent } };
      };
      const coldFloors: BurstFloor[] = [];
      try {
        const cold = await tunnelBurst();
        const coldDirect = await burstAt(targetPort, users);
        rows.push({ users, phase: 'cold', ...cold, direct: coldDirect, floors: coldFloors, tlsPipe: undefined });
        await sleep(warmAfterMs);
        const warm = await tunnelBurst();
        const warmDirect = await burstAt(targetPort, users);
        rows.push({ users, phase: 'warm', ...warm, direct: warmDirect, floors: [], tlsPipe: undefined });
      } finally {
        agent.child.kill('SIGKILL');
        relay.child.kill('SIGKILL');
      }
      coldFloors.push(...(await floorBursts(targetPort, users)));
      const [coldRow, warmRow] = rows.slice(-2);
      const pipe = await nodeTlsPipe(targetPort);
      try {
        coldRow!.tlsPipe = await burstAt(pipe.port, users);
        await sleep(warmAfterMs);
        warmRow!.tlsPipe = await burstAt(pipe.port, users);
      } finally {
        pipe.kill();
      }
    }
  } finally {
    target.child.kill('SIGKILL');
  }
  return rows;
}
