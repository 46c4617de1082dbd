import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { ROOT, percentile, sleep, spawnUntil } from './lib.js';

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
}

export interface BurstRow {
  users: number;
  /** `cold`: right after the agent connected; `warm`: 10 s after the cold burst. */
  phase: 'cold' | 'warm';
  tunnel: BurstOutcome;
  direct: BurstOutcome;
  /** CPU time the relay and the agent used during the tunnel burst, in ms; undefined where `/proc` is not there to read it. */
  cpuMs: { relay: number; agent: number } | undefined;
}

/** CPU time (user and system, all threads) a process has used, in ms, from `/proc`; undefined off Linux. */
function cpuMsOf(pid: number | undefined): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // After the command name, which may hold spaces: utime and stime are the 12th and 13th fields, in clock ticks (100/s).
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return undefined;
  }
}

/** Gives up on a user after this long, in ms: far beyond any timeout of ours. */
const USER_LIMIT_MS = 15_000;

/** `users` connections at once to `port`; each writes a few bytes and waits for the first one back. */
async function burstAt(port: number, users: number): Promise<BurstOutcome> {
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
  return {
    ok: sorted.length,
    failed: users - sorted.length,
    p50: percentile(sorted, 0.5),
    p90: percentile(sorted, 0.9),
    p99: percentile(sorted, 0.99),
    max: sorted.at(-1) ?? Number.NaN,
    sorted,
  };
}

/**
 * 7. Bursts of new users: for each N, a fresh relay and agent (the CLIs with
 * their defaults, self-signed TLS between them, each its own process) and an
 * echo target like a typical service (Node's default backlog, its own
 * process). N users hit the relay's public port at the same instant right
 * after the agent connected (cold), and again 10 s later (warm); each burst is
 * followed by the same N straight to the target.
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
      try {
        const cold = await tunnelBurst();
        const coldDirect = await burstAt(targetPort, users);
        rows.push({ users, phase: 'cold', ...cold, direct: coldDirect });
        await sleep(warmAfterMs);
        const warm = await tunnelBurst();
        const warmDirect = await burstAt(targetPort, users);
        rows.push({ users, phase: 'warm', ...warm, direct: warmDirect });
      } finally {
        agent.child.kill('SIGKILL');
        relay.child.kill('SIGKILL');
      }
    }
  } finally {
    target.child.kill('SIGKILL');
  }
  return rows;
}
