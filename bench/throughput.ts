// Throughput of one stream, sender and receiver in separate processes on loopback:
// PoolConn vs raw ws.send vs ws.createWebSocketStream vs a raw TLS socket,
// each over TLS 1.3, in interleaved rounds so that machine noise hits every
// mode alike. Prints MB/s and ratios against raw ws; writes bench/results/throughput.json.
//
//   npx -y pnpm@10 bench            # 1 GiB per run, 3 rounds
//   npx -y pnpm@10 bench -- --quick # 128 MiB per run, 1 round (smoke check)
import { fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { connect as tlsConnect, createServer as createTlsServer } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import WebSocket, { WebSocketServer, createWebSocketStream } from 'ws';
import { generate } from 'selfsigned';
import { receiveId, sendId, type PoolConn } from '@pool/shared';

const MODES = ['poolconn', 'ws-send', 'ws-stream', 'raw-tls'] as const;
type Mode = (typeof MODES)[number];
const CHUNK = 64 * 1024;

interface SinkReady {
  port: number;
  cert: string;
}

/** Child side: accepts one connection per run, counts bytes, answers one byte when `total` arrived. */
async function runSink(mode: Mode, total: number): Promise<void> {
  const pems = await generate([{ name: 'commonName', value: 'localhost' }], { keyType: 'ec', algorithm: 'sha256' });
  const tlsOptions = { cert: pems.cert, key: pems.private, minVersion: 'TLSv1.3' as const };
  let port: number;
  if (mode === 'raw-tls') {
    const server = createTlsServer(tlsOptions, (socket) => {
      let received = 0;
      socket.on('error', () => {});
      socket.on('data', (data: Buffer) => {
        received += data.length;
        if (received >= total) socket.end('!');
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  } else {
    const server = createHttpsServer(tlsOptions);
    const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 });
    wss.on('connection', (ws) => {
      ws.on('error', () => {});
      let received = 0;
      const count = (length: number, ack: () => void): void => {
        received += length;
        if (received >= total) ack();
      };
      if (mode === 'ws-send') {
        ws.on('message', (data: Buffer) => count(data.length, () => ws.send(Buffer.from('!'))));
      } else if (mode === 'ws-stream') {
        const stream = createWebSocketStream(ws);
        stream.on('error', () => {});
        stream.on('data', (data: Buffer) => count(data.length, () => stream.write('!')));
      } else {
        const conn = sendId(ws, '0000beef');
        conn.on('error', () => {});
        conn.on('data', (data: Buffer) => count(data.length, () => conn.write('!')));
      }
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  }
  process.send!({ port, cert: pems.cert } satisfies SinkReady);
}

async function writeAll(write: (chunk: Buffer) => boolean, drained: () => Promise<unknown>, total: number): Promise<void> {
  const chunk = Buffer.alloc(CHUNK, 0x5a);
  for (let sent = 0; sent < total; sent += CHUNK) {
    if (!write(chunk)) await drained();
  }
}

/** Parent side: one timed run against a fresh sink process. Returns MB/s. */
async function timedRun(mode: Mode, total: number): Promise<number> {
  const child: ChildProcess = fork(fileURLToPath(import.meta.url), ['--sink', mode, '--bytes', String(total)], {
    execArgv: ['--enable-source-maps'],
  });
  try {
    const [{ port }] = (await once(child, 'message')) as [SinkReady];
    const url = `wss://127.0.0.1:${port}/`;
    let started = 0;
    if (mode === 'raw-tls') {
      const socket = tlsConnect({ port, host: '127.0.0.1', rejectUnauthorized: false });
      await once(socket, 'secureConnect');
      const acked = once(socket, 'data');
      started = performance.now();
      await writeAll((c) => socket.write(c), () => once(socket, 'drain'), total);
      await acked;
      socket.destroy();
    } else {
      const ws = new WebSocket(url, { perMessageDeflate: false, rejectUnauthorized: false });
      if (mode === 'poolconn') {
        const conn: PoolConn = await receiveId(ws, 10_000);
        const acked = once(conn, 'data');
        started = performance.now();
        await writeAll((c) => conn.write(c), () => once(conn, 'drain'), total);
        await acked;
        conn.destroy();
      } else {
        await once(ws, 'open');
        if (mode === 'ws-stream') {
          const stream = createWebSocketStream(ws);
          stream.on('error', () => {});
          const acked = once(stream, 'data');
          started = performance.now();
          await writeAll((c) => stream.write(c), () => once(stream, 'drain'), total);
          await acked;
        } else {
          // Raw ws as its users write it: send, and wait for the socket to drain when it asks.
          const socket = (ws as unknown as { _socket: Socket })._socket;
          const acked = once(ws, 'message');
          started = performance.now();
          await writeAll(
            (c) => {
              ws.send(c, { binary: true });
              return !socket.writableNeedDrain;
            },
            () => once(socket, 'drain'),
            total,
          );
          await acked;
        }
        ws.terminate();
      }
    }
    const seconds = (performance.now() - started) / 1000;
    return total / 1e6 / seconds;
  } finally {
    child.kill();
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      sink: { type: 'string' },
      bytes: { type: 'string' },
      quick: { type: 'boolean', default: false },
      rounds: { type: 'string' },
    },
  });
  if (values.sink) {
    await runSink(values.sink as Mode, Number(values.bytes));
    return;
  }
  const total = Number(values.bytes ?? (values.quick ? 128 : 1024) * 1024 * 1024);
  const rounds = Number(values.rounds ?? (values.quick ? 1 : 3));
  const samples = new Map<Mode, number[]>(MODES.map((mode) => [mode, []]));
  for (let round = 1; round <= rounds; round++) {
    for (const mode of MODES) {
      const mbps = await timedRun(mode, total);
      samples.get(mode)!.push(mbps);
      console.log(`round ${round}/${rounds}  ${mode.padEnd(10)} ${mbps.toFixed(0).padStart(6)} MB/s`);
    }
  }
  const wsSend = median(samples.get('ws-send')!);
  const rows = MODES.map((mode) => {
    const mbps = median(samples.get(mode)!);
    return { mode, mbps: Math.round(mbps), ratioToRawWs: Number((mbps / wsSend).toFixed(3)) };
  });
  console.log(`\none stream, TLS 1.3 on loopback, ${total / 2 ** 20} MiB per run, median of ${rounds}`);
  console.log('| mode | MB/s | × raw ws.send |\n|---|---:|---:|');
  for (const row of rows) console.log(`| ${row.mode} | ${row.mbps} | ${row.ratioToRawWs.toFixed(2)} |`);
  const results = fileURLToPath(new URL('../../bench/results/', import.meta.url));
  mkdirSync(results, { recursive: true });
  writeFileSync(`${results}throughput.json`, `${JSON.stringify({ date: new Date().toISOString(), node: process.version, bytes: total, rounds, rows }, null, 2)}\n`);
}

await main();
