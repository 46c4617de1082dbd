// The README's first command: a relay, an agent and a small HTTP service on
// loopback (self-signed TLS between agent and relay, the agent pinning that
// certificate), a few thousand HTTP requests through the relay's public port
// with undici, a progress line while it runs, and a summary.
//
//   npx -y pnpm@10 demo                   # run and exit (0 when every request succeeded)
//   npx -y pnpm@10 demo -- --keep         # keep the tunnel up afterwards, for curl
//   npx -y pnpm@10 demo -- --requests 10000 --concurrency 100
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { Agent } from '@pool/client';
import { Relay, generateDevCertificate } from '@pool/server';

// `pnpm demo -- --keep` passes the `--` through: it is not an argument.
const { values } = parseArgs({
  args: process.argv.slice(2).filter((arg) => arg !== '--'),
  options: {
    requests: { type: 'string', default: '3000' },
    concurrency: { type: 'string', default: '50' },
    keep: { type: 'boolean', default: false },
  },
});
const total = Number(values.requests);
const concurrency = Number(values.concurrency);
const tty = process.stdout.isTTY;
/** The agent's longest pause between fill rounds. */
const MAX_INTERVAL_MS = 2_000;

function percentile(sorted: number[], p: number): number {
  return sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function main(): Promise<number> {
  const body = Buffer.alloc(2048, 'x');
  const service = createServer((request, response) => {
    response.setHeader('content-type', 'text/plain');
    response.end(request.url === '/' ? 'hello through the tunnel\n' : body);
  });
  await new Promise<void>((resolve) => service.listen(0, '127.0.0.1', resolve));
  const servicePort = (service.address() as AddressInfo).port;

  const cert = await generateDevCertificate();
  const relay = new Relay({ host: '127.0.0.1', publicHost: '127.0.0.1', tls: cert, maxCap: 200, getTimeout: 5_000 });
  await relay.start();
  const { port, publicPort } = relay.address();
  const agent = new Agent({
    server: `127.0.0.1:${port}`,
    tls: { ca: cert.cert }, // verified TLS, trusting exactly the relay's generated certificate
    target: `127.0.0.1:${servicePort}`,
    minCap: 8,
    maxCap: 64,
    minInterval: 100,
    maxInterval: MAX_INTERVAL_MS,
  });
  agent.start();
  await new Promise<void>((resolve) => agent.once('control', () => resolve()));
  console.log(`relay: agents on TLS 127.0.0.1:${port} (raw TLS or WebSocket, by ALPN), users on tcp 127.0.0.1:${publicPort}`);
  console.log(`agent: target http://127.0.0.1:${servicePort}, pool ${agent.pool.Capacity()}..64 connections`);

  const samples: Array<{ t: number; capacity: number; interval: number; idle: number }> = [];
  const started = performance.now();
  const sampler = setInterval(() => {
    const s = agent.stats();
    samples.push({ t: Math.round(performance.now() - started), capacity: s.capacity, interval: s.interval, idle: s.idle });
  }, 100);

  // Every fifth request closes its connection, so the relay keeps opening new tunnels.
  const users = new Pool(`http://127.0.0.1:${publicPort}`, { connections: concurrency });
  const latencies: number[] = [];
  let done = 0;
  let errors = 0;
  let bytes = 0;
  let next = 0;
  const progress = setInterval(() => {
    const line = `  ${done}/${total} requests, ${errors} errors, pool idle ${agent.pool.Active()} capacity ${agent.pool.Capacity()} interval ${agent.pool.Interval()} ms`;
    process.stdout.write(tty ? `\r${line}` : `${line}\n`);
  }, tty ? 100 : 1_000);
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < total) {
        const i = next++;
        const t0 = performance.now();
        try {
          const response = await users.request({ path: `/item/${i}`, method: 'GET', reset: i % 5 === 0 });
          const payload = Buffer.from(await response.body.arrayBuffer());
          if (response.statusCode !== 200 || payload.length !== body.length) throw new Error(`bad response ${response.statusCode}`);
          bytes += payload.length;
          latencies.push(performance.now() - t0);
        } catch {
          errors++;
        }
        done++;
      }
    }),
  );
  clearInterval(progress);
  clearInterval(sampler);
  const seconds = (performance.now() - started) / 1000;
  if (tty) process.stdout.write('\n');

  latencies.sort((a, b) => a - b);
  const relayStats = relay.stats();
  // The final values belong to the range too: the sampler may have missed the last change.
  const capacities = [...samples.map((s) => s.capacity), agent.pool.Capacity()];
  const intervals = [...samples.map((s) => s.interval), agent.pool.Interval()];
  console.log('\nsummary');
  console.log(`  requests      ${done} in ${seconds.toFixed(2)} s (${Math.round(done / seconds)} req/s), ${errors} errors`);
  console.log(`  latency       p50 ${percentile(latencies, 50).toFixed(2)} ms, p99 ${percentile(latencies, 99).toFixed(2)} ms`);
  console.log(`  bytes         ${bytes} response-body bytes through the tunnel`);
  console.log(`  tunnels       ${relayStats.accepted} opened by users, ${relayStats.failed} failed, ${relayStats.noConnection} without a pooled connection`);
  console.log(`  transport     ${agent.stats().transport === 'tls' ? 'raw TLS (ALPN pool/1)' : agent.stats().transport} pooled connections`);
  console.log(`  pool capacity ${capacities[0] ?? '-'} -> ${agent.pool.Capacity()} (range ${Math.min(...capacities)}..${Math.max(...capacities)})`);
  const [shortest, longest] = [Math.min(...intervals), Math.max(...intervals)];
  // Busy the whole run, the fill interval stays at its floor: it lengthens only while the pool sits full and idle.
  console.log(
    shortest === longest
      ? `  pool interval ${shortest} ms throughout: busy, the pool refills at its shortest pause (it lengthens towards ${MAX_INTERVAL_MS} ms only while idle)`
      : `  pool interval ${intervals[0] ?? '-'} -> ${agent.pool.Interval()} ms (range ${shortest}..${longest} ms)`,
  );

  if (values.keep) {
    console.log(`\nthe tunnel stays up: curl http://127.0.0.1:${publicPort}/   (Ctrl+C to stop)`);
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
  }
  await users.close();
  await agent.close();
  await relay.close();
  await new Promise<void>((resolve) => service.close(() => resolve()));
  return errors === 0 && done === total ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error);
    process.exit(1);
  },
);
