// The benchmark suite: `npx -y pnpm@10 bench` (full) or `npx -y pnpm@10 bench -- --quick`.
// Relay, agent and baselines run as separate processes on loopback; every figure
// is reported next to its baseline measured in the same run, as a ratio.
// Writes bench/results/results.{json,md} and bench/results/chart.svg.
import { mkdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { bursts, type BurstOutcome, type BurstRow } from './burst.js';
import { fileDownload } from './file-download.js';
import { floodOfWaitingUsers } from './flood.js';
import { udpThroughTunnel } from './udp.js';
import { wanUsers } from './wan.js';
import { besideTlsPipe } from './tls-pipe.js';
import { killAll } from './lib.js';
import { downloadThroughput, duplexThroughput, fillRate, getLatency, memoryPerConnection, scale, throughTunnel, type FillRun, type MemoryRow } from './measure.js';
import { barChart, document, lineChart } from './svg.js';

// `pnpm bench -- --quick` passes the `--` through: it is not an argument.
const { values } = parseArgs({ args: process.argv.slice(2).filter((arg) => arg !== '--'), options: { quick: { type: 'boolean', default: false }, only: { type: 'string' } } });
const quick = values.quick;
const wanted = (name: string): boolean => values.only === undefined || values.only.split(',').includes(name);
const sizes = quick
  ? { duplexBytes: 128 * 2 ** 20, rounds: 1, fill: 300, gets: 1_000, memory: [500], scale: 2_000, bulk: 128 * 2 ** 20, httpSeconds: 2, file: 50e6, bursts: [200, 1_000], udpRates: [5_000], udpSeconds: 2 }
  : { duplexBytes: 2 * 2 ** 30, rounds: 3, fill: 1_000, gets: 10_000, memory: [1_000, 5_000], scale: 10_000, bulk: 1 * 2 ** 30, httpSeconds: 5, file: 200e6, bursts: [200, 1_000], udpRates: [2_000, 10_000, 20_000, 40_000], udpSeconds: 5 };

interface Check {
  figure: string;
  ours: string;
  baseline: string;
  ratio: number | undefined;
  target: string;
  met: boolean;
}

const checks: Check[] = [];
const results: Record<string, unknown> = { date: new Date().toISOString(), node: process.version, quick, sizes };
const check = (figure: string, ours: string, baseline: string, ratio: number | undefined, target: string, met: boolean): void => {
  checks.push({ figure, ours, baseline, ratio, target, met });
  console.log(`${met ? 'MET   ' : 'MISSED'} ${figure}: ${ours} vs ${baseline}${ratio === undefined ? '' : ` (x${ratio.toFixed(2)})`}, target ${target}`);
};
const kib = (bytes: number): string => `${(bytes / 1024).toFixed(1)} KiB`;

async function main(): Promise<void> {
  let duplex: Record<string, number> | undefined;
  let fill: Awaited<ReturnType<typeof fillRate>> | undefined;

  if (wanted('duplex')) {
    console.log(`1. duplex throughput, ${sizes.duplexBytes / 2 ** 20} MiB each way, ${sizes.rounds} round(s)`);
    duplex = await duplexThroughput(sizes.duplexBytes, sizes.rounds);
    results.duplexMBpsEachWay = duplex;
    check('PoolConn duplex throughput', `${duplex.poolconn!.toFixed(0)} MB/s`, `raw ws ${duplex['ws-send']!.toFixed(0)} MB/s`, duplex.poolconn! / duplex['ws-send']!, '>= 0.95 x raw ws', duplex.poolconn! >= 0.95 * duplex['ws-send']!);
  }
  if (wanted('download')) {
    console.log(`1b. download, relay to agent, ${sizes.bulk / 2 ** 20} MiB, ${sizes.rounds} round(s)`);
    const download = await downloadThroughput(sizes.bulk, sizes.rounds);
    results.downloadMiBps = download;
    check('PoolConn receive on the agent (relay to agent, one direction)', `${download.poolconn.toFixed(0)} MiB/s`, `raw wss receive ${download.raw.toFixed(0)} MiB/s`, download.poolconn / download.raw, '>= 0.95 x raw wss', download.poolconn >= 0.95 * download.raw);
  }
  if (wanted('fill')) {
    console.log(`2. pool fill rate, ${sizes.fill} connections`);
    fill = await fillRate(sizes.fill);
    results.fill = { ...fill, samples: undefined };
    const { pool, poolNoResumption, rawConcurrent, rawSequential, bareTls } = fill;
    check('pool fill rate', `${pool.perSecond.toFixed(0)} conn/s`, `full handshakes ${rawConcurrent.perSecond.toFixed(0)} conn/s at concurrency 32 (${rawSequential.perSecond.toFixed(0)} sequential)`, pool.perSecond / rawConcurrent.perSecond, '>= 1.8 x full-handshake rate', pool.perSecond >= 1.8 * rawConcurrent.perSecond);
    const cpu = (run: FillRun, server: string, client: string): string => `${server} ${run.serverCpuMsPerConn.toFixed(2)} ms + ${client} ${run.clientCpuMsPerConn.toFixed(2)} ms`;
    const cpuTotal = (run: FillRun): number => run.serverCpuMsPerConn + run.clientCpuMsPerConn;
    check('CPU per pooled connection while filling', cpu(pool, 'relay', 'agent'), `full handshakes at concurrency 32: ${cpu(rawConcurrent, 'server', 'client')}`, cpuTotal(pool) / cpuTotal(rawConcurrent), 'reported', true);
    check('ceiling: bare TLS 1.3 handshakes at concurrency 32, no WebSocket', `${bareTls.perSecond.toFixed(0)} conn/s (${cpu(bareTls, 'server', 'client')})`, `full handshakes ${rawConcurrent.perSecond.toFixed(0)} conn/s`, bareTls.perSecond / rawConcurrent.perSecond, 'reported', true);
    check('pool fill rate without TLS resumption', `${poolNoResumption.perSecond.toFixed(0)} conn/s (${cpu(poolNoResumption, 'relay', 'agent')})`, `with resumption ${pool.perSecond.toFixed(0)} conn/s`, poolNoResumption.perSecond / pool.perSecond, 'for reference', true);
  }
  if (wanted('gets')) {
    console.log(`3. get latency, ${sizes.gets} gets`);
    const gets = await getLatency(sizes.gets);
    results.gets = gets;
    check('IncomingGet on a warm pool, p99', `${gets.incomingP99.toFixed(1)} us (p50 ${gets.incomingP50.toFixed(1)})`, 'npws polls', undefined, '<= 50 us', gets.incomingP99 <= 50);
    check('OutgoingGet before its ID arrives, arrival to resolve, p99', `${(gets.outgoingP99 / 1000).toFixed(3)} ms (p50 ${(gets.outgoingP50 / 1000).toFixed(3)})`, 'npws: up to 50 ms (polls)', undefined, '< 1 ms', gets.outgoingP99 < 1_000);
  }
  if (wanted('memory')) {
    const rows: MemoryRow[] = [];
    for (const count of sizes.memory) {
      for (const transport of ['tls', 'websocket'] as const) {
        console.log(`4. memory at ${count} idle connections, ${transport}`);
        const row = await memoryPerConnection(count, transport);
        rows.push(row);
        if (transport === 'tls') {
          // The data-plane issue's target is absolute (32 KiB a side at 1,000); bare TLS is the floor under it.
          for (const [side, ours, floor] of [['relay', row.relayRssPerConn, row.rawServerRssPerConn], ['agent', row.agentRssPerConn, row.rawClientRssPerConn]] as const) {
            check(`${side} RSS per idle connection at ${count}, raw TLS`, kib(ours), `bare TLS ${side === 'relay' ? 'server' : 'client'} ${kib(floor)}`, ours / floor, '<= 32 KiB', ours <= 32 * 1024);
          }
          for (const [side, ours, floor] of [['relay', row.relayHeapPerConn, row.rawServerHeapPerConn], ['agent', row.agentHeapPerConn, row.rawClientHeapPerConn]] as const) {
            check(`${side} heap per idle connection at ${count}, raw TLS`, kib(ours), `bare TLS ${side === 'relay' ? 'server' : 'client'} ${kib(floor)}`, ours / floor, 'reported', true);
          }
          continue;
        }
        check(`relay RSS per idle connection at ${count}, WebSocket`, kib(row.relayRssPerConn), `raw ws server ${kib(row.rawServerRssPerConn)}`, row.relayRssPerConn / row.rawServerRssPerConn, '<= 1.1 x raw ws', row.relayRssPerConn <= 1.1 * row.rawServerRssPerConn);
        check(`agent RSS per idle connection at ${count}, WebSocket`, kib(row.agentRssPerConn), `raw ws client ${kib(row.rawClientRssPerConn)}`, row.agentRssPerConn / row.rawClientRssPerConn, '<= 1.1 x raw ws', row.agentRssPerConn <= 1.1 * row.rawClientRssPerConn);
        check(`relay heap per idle connection at ${count}, WebSocket`, kib(row.relayHeapPerConn), `raw ws server ${kib(row.rawServerHeapPerConn)}`, row.relayHeapPerConn / row.rawServerHeapPerConn, '<= 1.1 x raw ws', row.relayHeapPerConn <= 1.1 * row.rawServerHeapPerConn);
        check(`agent heap per idle connection at ${count}, WebSocket`, kib(row.agentHeapPerConn), `raw ws client ${kib(row.rawClientHeapPerConn)}`, row.agentHeapPerConn / row.rawClientHeapPerConn, '<= 1.1 x raw ws', row.agentHeapPerConn <= 1.1 * row.rawClientHeapPerConn);
      }
    }
    results.memory = rows;
  }
  if (wanted('scale')) {
    console.log(`5. scale: ${sizes.scale} idle connections`);
    // Full runs measure at the 30 s default over a whole period; quick runs at 2 s, projected.
    const keepAliveMs = quick ? 2_000 : 30_000;
    const result = await scale(sizes.scale, keepAliveMs);
    results.scale = { ...result, keepAliveMs };
    const atDefault = (result.keepAliveCpuShare * keepAliveMs) / 30_000;
    check(`relay keep-alive CPU holding ${sizes.scale} idle (keepAlive 30 s)`, `${(atDefault * 100).toFixed(2)}% of a core${quick ? ` (projected from ${(result.keepAliveCpuShare * 100).toFixed(2)}% at 2 s)` : ''}`, 'one core', undefined, '< 5% of a core', atDefault < 0.05);
    check(`IncomingGet p99 holding ${sizes.scale}`, `${(result.incomingP99 / 1000).toFixed(3)} ms`, '-', undefined, '< 5 ms', result.incomingP99 < 5_000);
  }
  if (wanted('tunnel')) {
    console.log('6. through the tunnel');
    const tunnel = await throughTunnel(sizes.bulk, sizes.httpSeconds);
    results.tunnel = tunnel;
    const rawWs = duplex?.['ws-send'];
    if (rawWs !== undefined) check('tunnel bulk throughput (one way)', `${tunnel.bulkMBps.toFixed(0)} MB/s`, `raw ws single leg ${rawWs.toFixed(0)} MB/s each way`, tunnel.bulkMBps / rawWs, '>= 0.8 x raw ws', tunnel.bulkMBps >= 0.8 * rawWs);
    check('HTTP requests/s, 50 keep-alive users', `${tunnel.tunnelRps.toFixed(0)} req/s`, `direct ${tunnel.directRps.toFixed(0)} req/s`, tunnel.tunnelRps / tunnel.directRps, '>= 0.5 x direct', tunnel.tunnelRps >= 0.5 * tunnel.directRps);
    check('ceiling: HTTP requests/s through two plain Node TCP forwarders (no TLS, WebSocket or pool)', `${tunnel.forwardedRps.toFixed(0)} req/s (the tunnel: x${(tunnel.tunnelRps / tunnel.forwardedRps).toFixed(2)} of it)`, `direct ${tunnel.directRps.toFixed(0)} req/s`, tunnel.forwardedRps / tunnel.directRps, 'reported', true);
    check('p99 latency the tunnel adds', `${(tunnel.tunnelP99 - tunnel.directP99).toFixed(2)} ms`, `direct p99 ${tunnel.directP99.toFixed(2)} ms`, undefined, 'reported', true);
  }

  if (wanted('file')) {
    console.log(`6b. file download from python3 -m http.server, ${sizes.file / 1e6} MB, ${sizes.rounds} round(s)`);
    const file = await fileDownload(sizes.file, sizes.rounds);
    results.fileDownload = file;
    if (file === undefined) console.log('  skipped: no python3');
    else {
      // Direct is Python copying from the page cache to loopback, a ceiling no tunnel reaches; one raw wss leg is the fairer yardstick.
      check(`file download, ${file.bytes / 1e6} MB from python3 -m http.server`, `${file.tunnelMBps.toFixed(0)} MB/s`, `direct ${file.directMBps.toFixed(0)} MB/s; one raw wss leg, client to server, ${file.rawLegMBps.toFixed(0)} MB/s (x${(file.tunnelMBps / file.rawLegMBps).toFixed(2)})`, file.tunnelMBps / file.directMBps, 'reported', true);
    }
  }

  let burstRows: BurstRow[] | undefined;
  if (wanted('burst')) {
    console.log(`7. bursts of ${sizes.bursts.join(' and ')} users at once, cold and 10 s later, tunnel vs direct`);
    burstRows = await bursts(sizes.bursts);
    const unsorted = ({ sorted: _sorted, ...outcome }: BurstOutcome): Omit<BurstOutcome, 'sorted'> => outcome;
    results.bursts = burstRows.map(({ tunnel, direct, floors, tlsPipe, ...row }) => ({
      ...row,
      tlsPipe: tlsPipe && unsorted(tlsPipe),
      tunnel: unsorted(tunnel),
      direct: unsorted(direct),
      floors: floors.map((floor) => ({ hops: floor.hops, forwarded: unsorted(floor.forwarded), direct: unsorted(floor.direct) })),
    }));
    const ms = (value: number): string => `${value.toFixed(0)} ms`;
    const times = (outcome: BurstOutcome): string => {
      // A SYN dropped on a full listen queue costs its user a 1 s retransmit: it shows as a p99 near 1 s on either side.
      const dropped = outcome.listenOverflows ? `, ${outcome.listenOverflows} SYNs dropped` : '';
      return `${outcome.ok}/${outcome.failed}, ${ms(outcome.p50)}/${ms(outcome.p90)}/${ms(outcome.p99)}/${ms(outcome.max)}${dropped}`;
    };
    for (const { users, phase, tunnel, direct, cpuMs, floors, tlsPipe } of burstRows) {
      const ratio = tunnel.p99 / direct.p99;
      // What the relay and agent spent while the users waited: on 2 cores, the p99 cannot fall below about half their sum.
      const cpu = cpuMs ? `; CPU relay ${ms(cpuMs.relay)}, agent ${ms(cpuMs.agent)}` : '';
      check(
        `burst of ${users}, ${phase}: ok/failed, time to first byte p50/p90/p99/max`,
        `${times(tunnel)}${cpu}`,
        `direct ${times(direct)}`,
        ratio,
        // The targets against direct (issue 12) were out of reach of two Node processes that only pipe; the
        // data-plane issue replaced them with the Node TLS pipe's, checked in the next row.
        'reported',
        true,
      );
      if (tlsPipe) {
        // The issue's targets: a cold burst of 1,000 none dropped and p99 <= 1.3 x the pipe's; a warm burst of 200 p99 <= the pipe's.
        const pipeBound = users === 1_000 && phase === 'cold' ? 1.3 : users === 200 && phase === 'warm' ? 1 : undefined;
        const pipeRatio = tunnel.p99 / tlsPipe.p99;
        check(
          `burst of ${users}, ${phase}: beside the Node TLS pipe (a fresh TLS connection per user)`,
          times(tunnel),
          `Node TLS pipe ${times(tlsPipe)}`,
          pipeRatio,
          pipeBound === undefined ? 'reported' : `0 failed, p99 <= ${pipeBound} x the pipe's`,
          pipeBound === undefined || (tunnel.failed === 0 && pipeRatio <= pipeBound),
        );
      }
      for (const { hops, forwarded, direct: floorDirect } of floors) {
        const through = hops === 1 ? 'one plain Node TCP forwarder' : 'two plain Node TCP forwarders';
        check(`floor: burst of ${users}, ${phase}, through ${through} (no TLS, WebSocket or pool)`, times(forwarded), `direct ${times(floorDirect)}`, forwarded.p99 / floorDirect.p99, 'reported', true);
      }
    }
  }

  if (wanted('udp')) {
    console.log(`8. UDP at ${sizes.udpRates.join(', ')} datagrams/s offered (512 B, 16 flows), tunnel vs direct`);
    const rows = await udpThroughTunnel(sizes.udpRates, 512, 16, sizes.udpSeconds);
    results.udp = rows;
    const pct = (share: number): string => `${(share * 100).toFixed(2)}%`;
    for (const { offeredPerSecond, tunnel, direct } of rows) {
      check(
        `UDP at ${offeredPerSecond} datagrams/s offered: delivered/s, loss`,
        `${tunnel.deliveredPerSecond.toFixed(0)}/s, loss ${pct(tunnel.loss)}`,
        `direct ${direct.deliveredPerSecond.toFixed(0)}/s, loss ${pct(direct.loss)}`,
        tunnel.deliveredPerSecond / direct.deliveredPerSecond,
        'reported',
        true,
      );
    }
  }

  if (wanted('flood')) {
    console.log('9. a flood of 10,000 users x 64 KiB while no pooled connection is free: relay RSS vs a plain Node server with the same caps');
    const row = await floodOfWaitingUsers(10_000);
    results.flood = row;
    const mib = (bytes: number): string => `+${(bytes / 2 ** 20).toFixed(0)} MiB`;
    check(
      `flood of ${row.users} users x 64 KiB, none served: RSS growth (users refused at once)`,
      `${mib(row.relay.rssGrowth)} (${row.relay.refused} refused)`,
      `plain Node server, same caps ${mib(row.floor.rssGrowth)} (${row.floor.refused} refused)`,
      row.relay.rssGrowth / row.floor.rssGrowth,
      '<= 128 MiB',
      row.relay.rssGrowth <= 128 * 2 ** 20,
    );
  }

  if (wanted('wan')) {
    const rtt = 50;
    console.log(`10. new users over a WAN: the relay-agent leg through a proxy adding ${rtt / 2} ms each way (RTT ${rtt} ms), beside a fresh TLS connection per user through the same proxy`);
    const rows = await wanUsers(rtt, { oneAtATime: quick ? 10 : 30, burst: 100 });
    results.wan = rows.map(({ burst, ...row }) => ({ ...row, burst: { ...burst, sorted: undefined } }));
    const pool = rows.find((row) => row.system === 'pool')!;
    const fresh = rows.find((row) => row.system === 'fresh TLS per user')!;
    const rtts = (ms: number): string => `${ms.toFixed(0)} ms (${(ms / rtt).toFixed(2)} RTT)`;
    check('WAN, a new user one at a time: p50', rtts(pool.oneAtATime.p50), `fresh TLS per user ${rtts(fresh.oneAtATime.p50)}`, pool.oneAtATime.p50 / fresh.oneAtATime.p50, '<= 1.3 RTT', pool.oneAtATime.p50 <= 1.3 * rtt);
    check('WAN, the agent\'s pool full after its control channel connected', `${pool.fillMs!.toFixed(0)} ms (${(pool.fillMs! / rtt).toFixed(1)} RTT)`, '-', undefined, 'reported', true);
    check(
      'WAN, a burst of 100 new users right after the agent\'s pool filled: p50 / p99 (failed)',
      `${rtts(pool.burst.p50)} / ${rtts(pool.burst.p99)} (${pool.burst.failed})`,
      `fresh TLS per user ${rtts(fresh.burst.p50)} / ${rtts(fresh.burst.p99)} (${fresh.burst.failed})`,
      pool.burst.p99 / fresh.burst.p99,
      'none failed, p50 <= 2 RTT, p99 <= fresh TLS',
      pool.burst.failed === 0 && pool.burst.p50 <= 2 * rtt && pool.burst.p99 <= fresh.burst.p99,
    );
  }

  if (wanted('tls-pipe')) {
    console.log(`11. the pair beside the Node TLS pipe (two processes that only pipe, TLS 1.3 between them): ${sizes.bulk / 2 ** 20} MiB through one tunnel, best of ${Math.max(2, sizes.rounds)}; 50 HTTP users for ${sizes.httpSeconds} s; idle memory`);
    const { tls, wss, pipe, pipeHoldingRss } = await besideTlsPipe(sizes.bulk, Math.max(2, sizes.rounds), sizes.httpSeconds);
    results.tlsPipe = { tls, wss, pipe, pipeHoldingRss };
    const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(0)} MiB`;
    for (const [name, pair] of [['raw TLS', tls], ['WebSocket', wss]] as const) {
      // The data-plane targets are the raw transport's; WebSocket is shown beside it, to see that it does not get slower.
      const target = (text: string, met: boolean): [string, boolean] => (name === 'raw TLS' ? [text, met] : ['reported', true]);
      check(`beside the Node TLS pipe, ${name}: one tunnel, MB/s`, `${pair.bulkMBps.toFixed(0)} MB/s`, `Node TLS pipe ${pipe.bulkMBps.toFixed(0)} MB/s`, pair.bulkMBps / pipe.bulkMBps, ...target('>= 0.95 x', pair.bulkMBps >= 0.95 * pipe.bulkMBps));
      check(`beside the Node TLS pipe, ${name}: CPU s per GB (both processes)`, `${pair.cpuSecondsPerGB.toFixed(2)} s`, `Node TLS pipe ${pipe.cpuSecondsPerGB.toFixed(2)} s`, pair.cpuSecondsPerGB / pipe.cpuSecondsPerGB, ...target('<= 1.2 x', pair.cpuSecondsPerGB <= 1.2 * pipe.cpuSecondsPerGB));
      check(`beside the Node TLS pipe, ${name}: HTTP, 50 keep-alive users, req/s`, `${pair.httpRps.toFixed(0)}`, `Node TLS pipe ${pipe.httpRps.toFixed(0)}`, pair.httpRps / pipe.httpRps, ...target('>= 0.95 x', pair.httpRps >= 0.95 * pipe.httpRps));
      check(`beside the Node TLS pipe, ${name}: idle RSS of both processes (the pair with its default 128 pooled connections)`, mib(pair.idleRss), `Node TLS pipe ${mib(pipe.idleRss)}`, pair.idleRss / pipe.idleRss, ...target('<= 1.2 x', pair.idleRss <= 1.2 * pipe.idleRss));
      check(`beside the Node TLS pipe, ${name}: idle RSS beside the pipe holding 128 idle tunnels (as many TLS connections as the pool)`, mib(pair.idleRss), `Node TLS pipe ${mib(pipeHoldingRss)}`, pair.idleRss / pipeHoldingRss, 'reported', true);
      check(`beside the Node TLS pipe, ${name}: the same, idle again after the bulk rounds`, mib(pair.rssAfterUse), `Node TLS pipe ${mib(pipe.rssAfterUse)}`, pair.rssAfterUse / pipe.rssAfterUse, 'reported', true);
    }
  }

  const out = fileURLToPath(new URL('../../bench/results/', import.meta.url));
  mkdirSync(out, { recursive: true });
  results.checks = checks;
  writeFileSync(`${out}results.json`, `${JSON.stringify(results, null, 2)}\n`);
  const table = ['| figure | ours | baseline (same run) | ratio | target | |', '|---|---|---|---:|---|---|'];
  for (const c of checks) table.push(`| ${c.figure} | ${c.ours} | ${c.baseline} | ${c.ratio === undefined ? '' : c.ratio.toFixed(2)} | ${c.target} | ${c.met ? 'met' : '**missed**'} |`);
  writeFileSync(`${out}results.md`, `${table.join('\n')}\n`);

  let body = '';
  let height = 20;
  if (duplex) {
    const bars = barChart('Duplex throughput, each way (MB/s)', 'MB/s', Object.entries(duplex).map(([label, value]) => ({ label, value })), 20, height, 760);
    body += bars.svg;
    height += bars.height;
  }
  if (fill) {
    const t = fill.samples.map((s) => s.t);
    body += `\n${lineChart(`Agent filling ${sizes.fill} connections: idle and capacity over time`, 'ms', [
      { label: 'idle', color: '#2b6cb0', points: fill.samples.map((s, i) => [t[i]!, s.idle]) },
      { label: 'capacity', color: '#c05621', points: fill.samples.map((s, i) => [t[i]!, s.capacity]) },
    ], 20, height, 760, 260)}`;
    height += 270;
  }
  const largest = burstRows?.filter((row) => row.phase === 'cold').at(-1);
  if (largest) {
    const cdf = (sorted: number[]): Array<[number, number]> => sorted.map((time, index) => [time, index + 1]);
    body += `\n${lineChart(`Burst of ${largest.users} users at once, cold: users answered by time to first byte`, 'ms', [
      { label: 'through the tunnel', color: '#2b6cb0', points: cdf(largest.tunnel.sorted) },
      { label: 'direct to the target', color: '#c05621', points: cdf(largest.direct.sorted) },
    ], 20, height, 760, 260)}`;
    height += 270;
  }
  writeFileSync(`${out}chart.svg`, document(800, height, body));
  console.log(`\n${table.join('\n')}\n\nwritten: bench/results/results.json, results.md, chart.svg`);
}

main()
  .catch((error: unknown) => {
    console.error(error);
    process.exitCode = 1;
  })
  .finally(() => {
    killAll();
    process.exit();
  });
