import { spawn } from 'node:child_process';
import { connect as tlsConnect } from 'node:tls';
import WebSocket from 'ws';
import { Pool } from 'undici';
import { ClientPool } from '@pool/client';
import { ServerPool, receiveId } from '@pool/server';
import { ROOT, RoleProcess, median, percentile, plainForwarders, sendToSink, sleep } from './lib.js';
import { DUPLEX_MODES, pipeFor, sendAndCount, type DuplexMode } from './roles.js';

type Sample = { t: number; idle: number; capacity: number; interval: number };

/** 1. Both directions at once through one connection, 64 KiB writes; MB/s each way, median of `rounds`. */
export async function duplexThroughput(total: number, rounds: number): Promise<Record<DuplexMode, number>> {
  const samples = Object.fromEntries(DUPLEX_MODES.map((mode) => [mode, [] as number[]])) as Record<DuplexMode, number[]>;
  for (let round = 0; round < rounds; round++) {
    for (const mode of DUPLEX_MODES) {
      const server = new RoleProcess('duplex-server', { mode, total });
      const { port } = await server.next<{ type: 'ready'; port: number }>('ready');
      let conn;
      if (mode === 'raw-tls') {
        conn = tlsConnect({ port, host: '127.0.0.1', rejectUnauthorized: false });
        await new Promise((resolve) => conn!.once('secureConnect', resolve));
      } else {
        const ws = new WebSocket(`wss://127.0.0.1:${port}/`, { perMessageDeflate: false, rejectUnauthorized: false, maxPayload: 64 * 1024 * 1024 });
        if (mode === 'poolconn') conn = await receiveId(ws, 10_000);
        else {
          await new Promise((resolve) => ws.once('open', resolve));
          conn = ws;
        }
      }
      const started = performance.now();
      await Promise.all([sendAndCount(pipeFor(mode, conn), total), server.next('received')]);
      const mbps = total / 1e6 / ((performance.now() - started) / 1000);
      samples[mode].push(mbps);
      console.log(`  duplex ${mode.padEnd(9)} round ${round + 1}: ${mbps.toFixed(0)} MB/s each way`);
      server.kill();
      (conn as { destroy?: () => void; terminate?: () => void }).destroy?.() ?? (conn as WebSocket).terminate();
    }
  }
  return Object.fromEntries(DUPLEX_MODES.map((mode) => [mode, median(samples[mode])])) as Record<DuplexMode, number>;
}

/**
 * 1b. One direction, relay to agent: `total` bytes received through a PoolConn
 * that a ClientPool claimed, against a raw wss client receiving the same from
 * a raw ws server; MiB/s, median of `rounds`, the two interleaved.
 */
export async function downloadThroughput(total: number, rounds: number): Promise<{ poolconn: number; raw: number }> {
  const samples = { poolconn: [] as number[], raw: [] as number[] };
  for (let round = 0; round < rounds; round++) {
    for (const mode of ['raw', 'pool'] as const) {
      const server = new RoleProcess('download-server', { mode, total });
      const { port } = await server.next<{ type: 'ready'; port: number }>('ready');
      let received = 0;
      let started = 0;
      let close = (): void => {};
      await new Promise<void>((resolve) => {
        const count = (data: Buffer): void => {
          received += data.length;
          if (received >= total) resolve();
        };
        if (mode === 'raw') {
          const ws = new WebSocket(`wss://127.0.0.1:${port}/`, { perMessageDeflate: false, rejectUnauthorized: false });
          ws.on('error', () => {});
          ws.once('open', () => (started = performance.now()));
          ws.on('message', count);
          close = () => ws.terminate();
          return;
        }
        const agent = new ClientPool({ server: `127.0.0.1:${port}`, tls: 'insecure', minCap: 1, maxCap: 1 });
        agent.on('error', () => {});
        agent.ClientManager();
        close = () => void agent.Close();
        void server.next<{ type: 'id'; id: string }>('id').then(async ({ id }) => {
          started = performance.now();
          const conn = await agent.OutgoingGet(id, 10_000);
          conn.on('error', () => {});
          conn.on('data', count);
          const stop = close;
          close = () => {
            conn.destroy();
            stop();
          };
        });
      });
      const mibps = total / 2 ** 20 / ((performance.now() - started) / 1000);
      samples[mode === 'pool' ? 'poolconn' : 'raw'].push(mibps);
      console.log(`  download ${mode.padEnd(4)} round ${round + 1}: ${mibps.toFixed(0)} MiB/s`);
      close();
      server.kill();
    }
  }
  return { poolconn: median(samples.poolconn), raw: median(samples.raw) };
}

/** A fill measured from both ends: connections per second, and each side's CPU time per connection in ms. */
export interface FillRun {
  perSecond: number;
  serverCpuMsPerConn: number;
  clientCpuMsPerConn: number;
}

export interface FillResult {
  rawSequential: FillRun;
  rawConcurrent: FillRun;
  /** TLS 1.3 handshakes alone at concurrency 32, no WebSocket: the ceiling for anything that opens one TLS connection per pooled connection in Node. */
  bareTls: FillRun;
  pool: FillRun;
  poolNoResumption: FillRun;
  samples: Sample[];
}

type FullMessage = { type: 'full'; fillMs: number; cpuMs: number };

/** Starts a client against `server` and measures its fill: the rate, and each side's CPU per connection (the server's from the client's start until the client is full). */
async function fillFrom<T extends FullMessage>(server: RoleProcess, startClient: () => RoleProcess, count: number): Promise<{ run: FillRun; full: T }> {
  const before = await server.ask<{ type: 'usage'; cpuMs: number }>({ type: 'usage' });
  const client = startClient();
  const full = await client.next<T>('full');
  const after = await server.ask<{ type: 'usage'; cpuMs: number }>({ type: 'usage' });
  client.kill();
  server.kill();
  const run = { perSecond: (count / full.fillMs) * 1000, serverCpuMsPerConn: (after.cpuMs - before.cpuMs) / count, clientCpuMsPerConn: full.cpuMs / count };
  return { run, full };
}

/** Full handshakes by bare ws clients to a bare ws server; with `bare`, TLS handshakes alone, with no WebSocket upgrade after them. */
async function rawHandshakeRate(count: number, concurrency: number, bare = false): Promise<FillRun> {
  const server = new RoleProcess('raw-server', { bare });
  const { port } = await server.next<{ type: 'ready'; port: number }>('ready');
  return (await fillFrom(server, () => new RoleProcess('raw-clients', { port, count, concurrency, bare }), count)).run;
}

async function poolFill(count: number, reuse: boolean): Promise<{ run: FillRun; samples: Sample[] }> {
  const relay = new RoleProcess('relay', { maxCap: count + 10, keepAlive: 30_000 });
  const { port } = await relay.next<{ type: 'ready'; port: number }>('ready');
  const { run, full } = await fillFrom<FullMessage & { samples: Sample[] }>(relay, () => new RoleProcess('agent', { port, count, reuse, keepAlive: 30_000 }), count);
  return { run, samples: full.samples };
}

/** 2. Time for an agent to hold `count` pooled connections, against full wss handshakes in the same run. */
export async function fillRate(count: number): Promise<FillResult> {
  const rawSequential = await rawHandshakeRate(Math.min(count, 300), 1);
  const rawConcurrent = await rawHandshakeRate(count, 32);
  const bareTls = await rawHandshakeRate(count, 32, true);
  const withResumption = await poolFill(count, true);
  const without = await poolFill(count, false);
  return { rawSequential, rawConcurrent, bareTls, pool: withResumption.run, poolNoResumption: without.run, samples: withResumption.samples };
}

/** 3a. IncomingGet on a warm pool held by an agent in another process: latencies in µs. */
async function incomingGets(relay: RoleProcess, batches: number, perBatch: number, waitFor: number): Promise<number[]> {
  const latencies: number[] = [];
  for (let batch = 0; batch < batches; batch++) {
    for (let i = 0; i < 2_000; i++) {
      const { active } = await relay.ask<{ type: 'count'; active: number }>({ type: 'count' });
      if (active >= waitFor) break;
      await sleep(10);
    }
    const { latencies: batchLatencies } = await relay.ask<{ type: 'gets'; latencies: number[] }>({ type: 'gets', count: perBatch });
    latencies.push(...batchLatencies);
  }
  return latencies;
}

export async function getLatency(gets: number): Promise<{ incomingP50: number; incomingP99: number; outgoingP50: number; outgoingP99: number }> {
  const perBatch = 1_000;
  const relay = new RoleProcess('relay', { maxCap: perBatch + 10, keepAlive: 30_000 });
  const { port } = await relay.next<{ type: 'ready'; port: number }>('ready');
  const agent = new RoleProcess('agent', { port, count: perBatch, reuse: true, keepAlive: 30_000 });
  await agent.next('full');
  const incoming = await incomingGets(relay, Math.max(1, Math.round(gets / perBatch)), perBatch, perBatch);
  agent.kill();
  relay.kill();

  // 3b. OutgoingGet issued before its ID arrives. In one process, so the claim can be
  // issued the instant the relay sends the ID, before the agent can have read it.
  const server = new ServerPool({ host: '127.0.0.1', maxCap: 200 });
  await server.ServerManager();
  const client = new ClientPool({ server: `ws://127.0.0.1:${server.address()!.port}`, minCap: 16, maxCap: 64, minInterval: 0, maxInterval: 50 });
  const arrivedAt = new Map<string, bigint>();
  const outgoing: number[] = [];
  client.on('connection', (id: string) => arrivedAt.set(id, process.hrtime.bigint()));
  let claimed = 0;
  const done = new Promise<void>((resolve) => {
    server.on('connection', (id: string) => {
      if (claimed >= gets) return;
      void client.OutgoingGet(id, 5_000).then((conn) => {
        const resolvedAt = process.hrtime.bigint();
        outgoing.push(Number(resolvedAt - arrivedAt.get(id)!) / 1_000);
        arrivedAt.delete(id);
        conn.destroy();
        if (++claimed === gets) resolve();
      });
    });
  });
  client.ClientManager();
  const drain = async (): Promise<void> => {
    while (claimed < gets) {
      const { conn } = await server.IncomingGet(5_000);
      conn.on('error', () => {});
      conn.destroy();
    }
  };
  await Promise.all([done, drain()]);
  await Promise.all([client.Close(), server.Close()]);
  return {
    incomingP50: percentile(incoming, 0.5),
    incomingP99: percentile(incoming, 0.99),
    outgoingP50: percentile(outgoing, 0.5),
    outgoingP99: percentile(outgoing, 0.99),
  };
}

export interface MemoryRow {
  count: number;
  /** The pool's transport; the baseline is a bare TLS server and clients for `tls`, raw ws over TLS for `websocket`. */
  transport: 'tls' | 'websocket';
  relayRssPerConn: number;
  relayHeapPerConn: number;
  agentRssPerConn: number;
  agentHeapPerConn: number;
  rawServerRssPerConn: number;
  rawServerHeapPerConn: number;
  rawClientRssPerConn: number;
  rawClientHeapPerConn: number;
}

type Mem = { type: 'mem'; rss: number; heap: number; baseline: { rss: number; heap: number }; active: number };
const perConn = (mem: Mem, count: number): [number, number] => [(mem.rss - mem.baseline.rss) / count, (mem.heap - mem.baseline.heap) / count];

/**
 * 4. RSS and heap per idle pooled connection, both processes, on `transport`, against the same connections
 * without a pool in the same run (bytes): bare TLS for the raw transport, raw ws for WebSocket.
 */
export async function memoryPerConnection(count: number, transport: 'tls' | 'websocket'): Promise<MemoryRow> {
  const relay = new RoleProcess('relay', { maxCap: count + 10, keepAlive: 30_000 });
  const { port } = await relay.next<{ type: 'ready'; port: number }>('ready');
  const agent = new RoleProcess('agent', { port, count, reuse: true, keepAlive: 30_000, transport });
  await agent.next('full');
  await sleep(500);
  const [relayRss, relayHeap] = perConn(await relay.ask<Mem>({ type: 'mem' }), count);
  const [agentRss, agentHeap] = perConn(await agent.ask<Mem>({ type: 'mem' }), count);
  agent.kill();
  relay.kill();

  const bare = transport === 'tls';
  const rawServer = new RoleProcess('raw-server', { bare });
  const { port: rawPort } = await rawServer.next<{ type: 'ready'; port: number }>('ready');
  const rawClients = new RoleProcess('raw-clients', { port: rawPort, count, concurrency: 32, bare });
  await rawClients.next('full');
  await sleep(500);
  const [serverRss, serverHeap] = perConn(await rawServer.ask<Mem>({ type: 'mem' }), count);
  const [clientRss, clientHeap] = perConn(await rawClients.ask<Mem>({ type: 'mem' }), count);
  rawClients.kill();
  rawServer.kill();
  return {
    count,
    transport,
    relayRssPerConn: relayRss,
    relayHeapPerConn: relayHeap,
    agentRssPerConn: agentRss,
    agentHeapPerConn: agentHeap,
    rawServerRssPerConn: serverRss,
    rawServerHeapPerConn: serverHeap,
    rawClientRssPerConn: clientRss,
    rawClientHeapPerConn: clientHeap,
  };
}

/** 5. One relay holding `count` idle pooled connections: keep-alive CPU and IncomingGet latency. */
export async function scale(count: number, keepAliveMs: number): Promise<{ fillSeconds: number; keepAliveCpuShare: number; incomingP99: number }> {
  const relay = new RoleProcess('relay', { maxCap: count + 10, keepAlive: keepAliveMs });
  const { port } = await relay.next<{ type: 'ready'; port: number }>('ready');
  const agent = new RoleProcess('agent', { port, count, reuse: true, keepAlive: keepAliveMs });
  const { fillMs } = await agent.next<{ type: 'full'; fillMs: number }>('full');
  // Let the fill's aftermath (major GCs over the new heap) settle: this measures holding, not filling.
  await sleep(5_000);
  // One whole keep-alive period (and a bit): every idle connection pinged once.
  const { share } = await relay.ask<{ type: 'cpu'; share: number }>({ type: 'cpu', ms: keepAliveMs + 1_000 });
  const incoming = await incomingGets(relay, 1, 1_000, count);
  agent.kill();
  relay.kill();
  return { fillSeconds: fillMs / 1000, keepAliveCpuShare: share, incomingP99: percentile(incoming, 0.99) };
}

/**
 * 6. User -> relay -> agent -> target, every hop its own process: bulk MB/s and HTTP requests/s against direct, and
 * the same HTTP load through two plain forwarders (`forwardedRps`), the ceiling for any two Node hops.
 */
export async function throughTunnel(
  bulkBytes: number,
  httpSeconds: number,
): Promise<{ bulkMBps: number; directRps: number; tunnelRps: number; forwardedRps: number; directP99: number; tunnelP99: number }> {
  // Targets in their own process: a byte sink that answers once it has `bulkBytes`, and an HTTP server.
  const targets = spawn(process.execPath, ['-e', `
    const net = require('node:net'); const http = require('node:http');
    const sink = net.createServer((s) => { let n = 0; s.on('error', () => {}); s.on('data', (d) => { n += d.length; if (n >= ${bulkBytes}) s.end('done'); }); });
    const web = http.createServer((q, r) => r.end('x'.repeat(1024)));
    sink.listen(0, '127.0.0.1', () => web.listen(0, '127.0.0.1', () => process.stdout.write(JSON.stringify({ sink: sink.address().port, web: web.address().port }) + '\\n')));
  `], { stdio: ['ignore', 'pipe', 'inherit'] });
  const targetPorts = await new Promise<{ sink: number; web: number }>((resolve) => targets.stdout.once('data', (d: Buffer) => resolve(JSON.parse(d.toString()))));

  const cli = (bin: string, args: string[]): Promise<{ kill: () => void; line: string }> =>
    new Promise((resolve) => {
      const child = spawn(process.execPath, [`${ROOT}${bin}`, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
      child.stdout.setEncoding('utf8');
      let buffered = '';
      child.stdout.on('data', (chunk: string) => {
        buffered += chunk;
        const line = buffered.split('\n').find((l) => / ready | control connected/.test(l));
        if (line) resolve({ kill: () => child.kill('SIGKILL'), line });
      });
    });
  const common = ['--host', '127.0.0.1', '--public-host', '127.0.0.1', '--port', '0', '--status-interval', '0'];
  const bulkRelay = await cli('packages/server/dist/bin/pool-relay.js', [...common, '--public-port', '0']);
  const [, agentPort, publicPort] = / port=(\d+) public-port=(\d+)/.exec(bulkRelay.line)!.map(Number) as [number, number, number];
  const agentFor = (target: number): Promise<{ kill: () => void; line: string }> =>
    cli('packages/client/dist/bin/pool-agent.js', ['--server', `127.0.0.1:${agentPort}`, '--target', `127.0.0.1:${target}`, '--tls', 'insecure', '--min-cap', '64', '--max-cap', '128', '--min-interval', '20', '--status-interval', '0']);

  // Bulk: one tunnel, one direction.
  let agent = await agentFor(targetPorts.sink);
  await sleep(500);
  const bulkMBps = await sendToSink(publicPort, bulkBytes);
  agent.kill();

  // HTTP: 50 keep-alive users for `httpSeconds`, direct and through the tunnel.
  agent = await agentFor(targetPorts.web);
  await sleep(500);
  const load = async (port: number): Promise<{ rps: number; p99: number }> => {
    const pool = new Pool(`http://127.0.0.1:${port}`, { connections: 50 });
    const latencies: number[] = [];
    const deadline = performance.now() + httpSeconds * 1000;
    await Promise.all(
      Array.from({ length: 50 }, async () => {
        while (performance.now() < deadline) {
          const t0 = performance.now();
          const response = await pool.request({ path: '/', method: 'GET' });
          await response.body.arrayBuffer();
          latencies.push(performance.now() - t0);
        }
      }),
    );
    await pool.close();
    return { rps: latencies.length / httpSeconds, p99: percentile(latencies, 0.99) };
  };
  const direct = await load(targetPorts.web);
  const tunnel = await load(publicPort);
  agent.kill();
  bulkRelay.kill();
  const forwarders = await plainForwarders(targetPorts.web, 2);
  const forwarded = await load(forwarders.port);
  forwarders.kill();
  targets.kill('SIGKILL');
  return { bulkMBps, directRps: direct.rps, tunnelRps: tunnel.rps, forwardedRps: forwarded.rps, directP99: direct.p99, tunnelP99: tunnel.p99 };
}

