import { ROOT, nodeTlsPipe, percentile, sleep, spawnUntil } from './lib.js';
import { burstAt, type BurstOutcome } from './burst.js';

/** New users over a link with a round trip of `rttMs` between the relay's side and the agent's. */
export interface WanRow {
  rttMs: number;
  system: 'pool' | 'fresh TLS per user';
  /** Users one at a time, each timed from connect() to its echo, in ms. */
  oneAtATime: { p50: number; p90: number; samples: number };
  /** 100 users at once, right after the agent's pool first filled (for the fresh-TLS pair: right after it started). */
  burst: BurstOutcome;
  /** For the pool: from the agent's control channel connecting to its pool holding its capacity, in ms. */
  fillMs?: number;
}

/**
 * A TCP proxy in its own process that holds every chunk, and the end of each
 * direction, for `oneWayMs` before passing it on: a WAN link's latency where
 * the kernel has no netem. Equal delays keep the order of chunks.
 */
async function delayingProxy(targetPort: number, oneWayMs: number): Promise<{ port: number; kill: () => void }> {
  const { child, match } = await spawnUntil(
    [
      '-e',
      `const net = require('node:net');
      const pass = (from, to) => {
        from.on('data', (chunk) => setTimeout(() => to.write(chunk), ${oneWayMs}));
        from.on('end', () => setTimeout(() => to.end(), ${oneWayMs}));
        from.on('error', () => setTimeout(() => to.destroy(), ${oneWayMs}));
        from.on('close', () => setTimeout(() => to.destroy(), ${oneWayMs} + 1));
      };
      net.createServer({ allowHalfOpen: true, noDelay: true }, (client) => {
        const upstream = net.connect({ port: ${targetPort}, host: '127.0.0.1', allowHalfOpen: true, noDelay: true });
        pass(client, upstream);
        pass(upstream, client);
      }).listen(0, '127.0.0.1', 2048, function () { console.log('port=' + this.address().port); });`,
    ],
    /port=(\d+)/,
  );
  return { port: Number(match[1]), kill: () => child.kill('SIGKILL') };
}

/** `count` users one after another: connect, send a line, time until its echo. */
async function oneAtATime(port: number, count: number): Promise<WanRow['oneAtATime']> {
  const times: number[] = [];
  for (let i = 0; i < count; i++) {
    const outcome = await burstAt(port, 1);
    if (outcome.ok === 1) times.push(outcome.p50);
    await sleep(100);
  }
  return { p50: percentile(times, 0.5), p90: percentile(times, 0.9), samples: times.length };
}

const TARGET = `require('node:net').createServer({ noDelay: true }, (s) => { s.on('error', () => {}); s.pipe(s); }).listen(0, '127.0.0.1', 2048, function () { console.log('port=' + this.address().port); });`;

/**
 * 10. A WAN between the relay's host and the agent's: the pooled leg (and the
 * control channel) through a proxy that delays each chunk by half of `rttMs`
 * each way; users, relay, agent and an echo target otherwise on loopback.
 * The pair (the CLIs with their defaults) beside a fresh TLS connection per
 * user through the same proxy (two Node processes that only pipe, TLS 1.3
 * between them): what a pool exists to beat.
 */
export async function wanUsers(rttMs: number, users: { oneAtATime: number; burst: number }): Promise<WanRow[]> {
  const target = await spawnUntil(['-e', TARGET], /port=(\d+)/);
  const targetPort = Number(target.match[1]);
  const rows: WanRow[] = [];
  try {
    {
      const relay = await spawnUntil(
        [`${ROOT}packages/server/dist/bin/pool-relay.js`, '--host', '127.0.0.1', '--public-host', '127.0.0.1', '--port', '0', '--public-port', '0', '--token', 'bench-wan-token-0123456789', '--status-interval', '100', '--log-level', 'error'],
        / ready port=(\d+) public-port=(\d+)/,
      );
      const link = await delayingProxy(Number(relay.match[1]), rttMs / 2);
      const publicPort = Number(relay.match[2]);
      try {
        const agent = await spawnUntil(
          [`${ROOT}packages/client/dist/bin/pool-agent.js`, '--server', `127.0.0.1:${link.port}`, '--target', `127.0.0.1:${targetPort}`, '--tls', 'insecure', '--token', 'bench-wan-token-0123456789', '--status-interval', '20', '--log-level', 'error'],
          /control connected/,
        );
        try {
          // Right after the pool first filled: the agent holds as many idle connections as its first capacity (its
          // --min-cap; the capacity creeps up a connection a round afterwards, as npws's rules have it).
          const connectedAt = performance.now();
          let filledAt: number | undefined;
          let firstCapacity: number | undefined;
          agent.child.stdout!.on('data', (chunk: string) => {
            for (const [, idle, capacity] of chunk.matchAll(/ idle=(\d+) capacity=(\d+) /g)) {
              firstCapacity ??= Number(capacity);
              if (Number(idle) >= firstCapacity) filledAt ??= performance.now();
            }
          });
          while (performance.now() - connectedAt < 30_000 && filledAt === undefined) await sleep(10);
          const fillMs = (filledAt ?? Number.NaN) - connectedAt;
          const burst = await burstAt(publicPort, users.burst);
          await sleep(1_000);
          rows.push({ rttMs, system: 'pool', burst, fillMs, oneAtATime: await oneAtATime(publicPort, users.oneAtATime) });
        } finally {
          agent.child.kill('SIGKILL');
        }
      } finally {
        link.kill();
        relay.child.kill('SIGKILL');
      }
    }
    {
      let link: { port: number; kill: () => void } | undefined;
      const pipe = await nodeTlsPipe(targetPort, async (farPort) => {
        link = await delayingProxy(farPort, rttMs / 2);
        return link.port;
      });
      try {
        const burst = await burstAt(pipe.port, users.burst);
        await sleep(1_000);
        rows.push({ rttMs, system: 'fresh TLS per user', burst, oneAtATime: await oneAtATime(pipe.port, users.oneAtATime) });
      } finally {
        pipe.kill();
        link?.kill();
      }
    }
  } finally {
    target.child.kill('SIGKILL');
  }
  return rows;
}
