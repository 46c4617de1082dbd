// Child-process side of the benchmark suite: `node roles.js <role> [json-args]`.
// Each role reports over IPC. Relay, agent, raw servers and clients run as
// separate processes so that each side's CPU and memory are its own.
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { connect as tlsConnect, createServer as createTlsServer, type Server } from 'node:tls';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import WebSocket, { WebSocketServer, createWebSocketStream } from 'ws';
import { ClientPool } from '@pool/client';
import { ServerPool, generateDevCertificate, sendId, type PooledConn } from '@pool/server';
import type { Duplex } from 'node:stream';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

export type Role = 'duplex-server' | 'download-server' | 'upload-server' | 'relay' | 'agent' | 'raw-server' | 'raw-clients';
export type DuplexMode = 'poolconn' | 'ws-send' | 'ws-stream' | 'raw-tls';
export const DUPLEX_MODES: DuplexMode[] = ['poolconn', 'ws-send', 'ws-stream', 'raw-tls'];
const CHUNK = 64 * 1024;

export interface RoleMessage {
  type: string;
  [key: string]: unknown;
}

function send(message: RoleMessage): void {
  process.send!(message);
}

/** CPU time this process has used, user and system, in ms. */
function cpuMs(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1_000;
}

/** Resident and heap memory after two GCs. */
function memory(): { rss: number; heap: number } {
  gc();
  gc();
  const { rss, heapUsed } = process.memoryUsage();
  return { rss, heap: heapUsed };
}

/** A byte-stream adapter over each transport, so one send/count loop serves every mode. */
interface Pipe {
  write(chunk: Buffer): boolean;
  onDrain(callback: () => void): void;
  onData(callback: (length: number) => void): void;
}

function pipeOver(stream: Duplex): Pipe {
  stream.on('error', () => {});
  return {
    write: (chunk) => stream.write(chunk),
    onDrain: (callback) => stream.once('drain', callback),
    onData: (callback) => stream.on('data', (data: Buffer) => callback(data.length)),
  };
}

function pipeOverWebSocket(ws: WebSocket): Pipe {
  const socket = (ws as unknown as { _socket: Socket })._socket;
  ws.on('error', () => {});
  return {
    // Raw ws as its users write it: send, and wait for the socket to drain when it asks.
    write: (chunk) => {
      ws.send(chunk, { binary: true });
      return !socket.writableNeedDrain;
    },
    onDrain: (callback) => socket.once('drain', callback),
    onData: (callback) => ws.on('message', (data: Buffer) => callback(data.length)),
  };
}

/** Sends `total` bytes in 64 KiB writes and counts what arrives; resolves when `total` has arrived and all is sent. */
export function sendAndCount(pipe: Pipe, total: number, onReceived?: () => void): Promise<void> {
  const chunk = Buffer.alloc(CHUNK, 0x5a);
  let received = 0;
  const receivedAll = new Promise<void>((resolve) => {
    pipe.onData((length) => {
      received += length;
      if (received >= total) {
        onReceived?.();
        resolve();
      }
    });
  });
  const sentAll = new Promise<void>((resolve) => {
    let sent = 0;
    const pump = (): void => {
      while (sent < total) {
        sent += CHUNK;
        if (!pipe.write(chunk)) return pipe.onDrain(pump);
      }
      resolve();
    };
    pump();
  });
  return Promise.all([receivedAll, sentAll]).then(() => undefined);
}

export function pipeFor(mode: DuplexMode, conn: Duplex | WebSocket): Pipe {
  if (mode === 'ws-send') return pipeOverWebSocket(conn as WebSocket);
  if (mode === 'ws-stream') return pipeOver(createWebSocketStream(conn as WebSocket));
  return pipeOver(conn as Duplex);
}

/** One end of a duplex throughput run: sends `total` and reports when it has received `total`. */
async function duplexServer({ mode, total }: { mode: DuplexMode; total: number }): Promise<void> {
  const cert = await generateDevCertificate();
  const tlsOptions = { ...cert, minVersion: 'TLSv1.3' as const };
  const serve = (conn: Duplex | WebSocket): void => {
    void sendAndCount(pipeFor(mode, conn), total, () => send({ type: 'received' }));
  };
  let address: AddressInfo;
  if (mode === 'raw-tls') {
    const server = createTlsServer(tlsOptions, serve);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    address = server.address() as AddressInfo;
  } else {
    const server = createHttpsServer(tlsOptions);
    const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 });
    wss.on('connection', (ws) => serve(mode === 'poolconn' ? sendId(ws, '0000beef') : ws));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    address = server.address() as AddressInfo;
  }
  send({ type: 'ready', port: address.port });
}

/**
 * Sends `total` bytes, in 64 KiB writes, to whoever connects: over a raw wss
 * connection (`ws.send`, waiting for the socket to drain) or over a PoolConn
 * a ServerPool hands out (whose ID it reports). One direction only, so that
 * the client's receive path is what is measured.
 */
async function downloadServer({ mode, total }: { mode: 'raw' | 'pool'; total: number }): Promise<void> {
  const cert = await generateDevCertificate();
  if (mode === 'pool') {
    const pool = new ServerPool({ host: '127.0.0.1', tls: cert, maxCap: 4 });
    await pool.ServerManager();
    send({ type: 'ready', port: pool.address()!.port });
    const { id, conn } = await pool.IncomingGet(60_000);
    send({ type: 'id', id });
    void sendAndCount(pipeOver(conn), total);
    return;
  }
  const server = createHttpsServer({ ...cert, minVersion: 'TLSv1.3' });
  const wss = new WebSocketServer({ server, perMessageDeflate: false });
  // Nothing comes back: only the sending half of sendAndCount runs to completion.
  wss.on('connection', (ws) => void sendAndCount(pipeOverWebSocket(ws), total));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  send({ type: 'ready', port: (server.address() as AddressInfo).port });
}

/**
 * A bare wss server that counts what its client sends and reports once
 * `total` bytes have arrived: the raw leg of a transfer from agent to relay,
 * whose frames are masked, as a client's must be.
 */
async function uploadServer({ total }: { total: number }): Promise<void> {
  const cert = await generateDevCertificate();
  const server = createHttpsServer({ ...cert, minVersion: 'TLSv1.3' });
  const wss = new WebSocketServer({ server, perMessageDeflate: false });
  wss.on('connection', (ws) => {
    let received = 0;
    pipeOverWebSocket(ws).onData((length) => {
      received += length;
      if (received === total) send({ type: 'received' });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  send({ type: 'ready', port: (server.address() as AddressInfo).port });
}

/** The relay: a ServerPool. Commands: mem, count, gets (IncomingGet latency), cpu (CPU use over a window). */
async function relay({ maxCap, keepAlive }: { maxCap: number; keepAlive: number }): Promise<void> {
  const cert = await generateDevCertificate();
  const pool = new ServerPool({ host: '127.0.0.1', tls: cert, maxCap, keepAlive });
  const baseline = memory();
  await pool.ServerManager();
  const handedOut: PooledConn[] = [];
  process.on('message', async (message: RoleMessage) => {
    if (message.type === 'mem') send({ type: 'mem', ...memory(), baseline, active: pool.Active() });
    if (message.type === 'count') send({ type: 'count', active: pool.Active() });
    if (message.type === 'usage') send({ type: 'usage', cpuMs: cpuMs() });
    if (message.type === 'gets') {
      const latencies: number[] = [];
      for (let i = 0; i < (message.count as number); i++) {
        const started = process.hrtime.bigint();
        const { conn } = await pool.IncomingGet(5_000);
        latencies.push(Number(process.hrtime.bigint() - started) / 1_000);
        handedOut.push(conn);
        conn.on('error', () => {});
      }
      send({ type: 'gets', latencies });
      for (const conn of handedOut.splice(0)) conn.destroy();
    }
    if (message.type === 'cpu') {
      const before = process.cpuUsage();
      await new Promise((resolve) => setTimeout(resolve, message.ms as number));
      const used = process.cpuUsage(before);
      send({ type: 'cpu', share: (used.user + used.system) / 1_000 / (message.ms as number) });
    }
  });
  send({ type: 'ready', port: pool.address()!.port });
}

/** The agent: a ClientPool held at exactly `count` connections; reports when full. */
async function agent({ port, count, reuse, keepAlive, transport = 'auto' }: { port: number; count: number; reuse: boolean; keepAlive: number; transport?: 'auto' | 'tls' | 'websocket' }): Promise<void> {
  const baseline = memory();
  const pool = new ClientPool({
    server: `127.0.0.1:${port}`,
    tls: 'insecure',
    minCap: count,
    maxCap: count,
    minInterval: 0,
    maxInterval: 100,
    keepAlive,
    tlsSessionReuse: reuse,
    handshakeTimeout: 30_000,
    transport,
  });
  pool.on('error', () => {});
  const started = performance.now();
  const cpuAtStart = cpuMs();
  const samples: Array<{ t: number; idle: number; capacity: number; interval: number }> = [];
  const sampler = setInterval(() => samples.push({ t: Math.round(performance.now() - started), idle: pool.Active(), capacity: pool.Capacity(), interval: pool.Interval() }), 20);
  pool.ClientManager();
  while (pool.Active() < count) await new Promise((resolve) => setTimeout(resolve, 2));
  const fillMs = performance.now() - started;
  clearInterval(sampler);
  send({ type: 'full', fillMs, cpuMs: cpuMs() - cpuAtStart, samples, dials: pool.stats().dials });
  process.on('message', (message: RoleMessage) => {
    if (message.type === 'mem') send({ type: 'mem', ...memory(), baseline, active: pool.Active() });
  });
}

/**
 * A bare ws server over TLS that holds whatever connects: the memory baseline for the relay. With `bare`, a TLS
 * server with no WebSocket on top: the cost of the TLS handshake alone.
 */
async function rawServer({ bare = false }: { bare?: boolean }): Promise<void> {
  const cert = await generateDevCertificate();
  let server: Server;
  let active: () => number;
  if (bare) {
    let held = 0;
    server = createTlsServer({ ...cert, minVersion: 'TLSv1.3' }, (socket) => {
      held++;
      socket.on('error', () => {});
    });
    active = () => held;
  } else {
    const https = createHttpsServer({ ...cert, minVersion: 'TLSv1.3' });
    const wss = new WebSocketServer({ server: https, perMessageDeflate: false });
    server = https;
    wss.on('connection', (ws) => ws.on('error', () => {}));
    active = () => wss.clients.size;
  }
  const baseline = memory();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  process.on('message', (message: RoleMessage) => {
    if (message.type === 'mem') send({ type: 'mem', ...memory(), baseline, active: active() });
    if (message.type === 'usage') send({ type: 'usage', cpuMs: cpuMs() });
  });
  send({ type: 'ready', port: (server.address() as AddressInfo).port });
}

/**
 * `count` bare wss clients, `concurrency` handshakes at a time: the handshake-rate and memory baseline for the agent.
 * With `bare`, TLS connections with no WebSocket on top.
 */
async function rawClients({ port, count, concurrency, bare = false }: { port: number; count: number; concurrency: number; bare?: boolean }): Promise<void> {
  const baseline = memory();
  const held: Array<WebSocket | Socket> = [];
  const open = (): Promise<WebSocket | Socket> => {
    if (bare) {
      const socket = tlsConnect({ port, host: '127.0.0.1', rejectUnauthorized: false, minVersion: 'TLSv1.3' });
      socket.on('error', () => {});
      return new Promise((resolve) => socket.once('secureConnect', () => resolve(socket)));
    }
    const ws = new WebSocket(`wss://127.0.0.1:${port}/`, { perMessageDeflate: false, rejectUnauthorized: false });
    ws.on('error', () => {});
    return new Promise((resolve) => ws.once('open', () => resolve(ws)));
  };
  const started = performance.now();
  const cpuAtStart = cpuMs();
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count) {
        next++;
        held.push(await open());
      }
    }),
  );
  send({ type: 'full', fillMs: performance.now() - started, cpuMs: cpuMs() - cpuAtStart });
  process.on('message', (message: RoleMessage) => {
    if (message.type === 'mem') send({ type: 'mem', ...memory(), baseline, active: held.length });
  });
}

const roles: Record<Role, (args: never) => Promise<void>> = {
  'duplex-server': duplexServer,
  'download-server': downloadServer,
  'upload-server': uploadServer,
  relay,
  agent,
  'raw-server': rawServer,
  'raw-clients': rawClients,
};

if (process.send && process.argv[2]) {
  await roles[process.argv[2] as Role](JSON.parse(process.argv[3] ?? '{}') as never);
}
