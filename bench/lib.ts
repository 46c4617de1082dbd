import { fork, spawn, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { fileURLToPath } from 'node:url';
import { generateDevCertificate } from '@pool/shared/internal';
import type { Role, RoleMessage } from './roles.js';

const ROLES = fileURLToPath(new URL('./roles.js', import.meta.url));
/** The repository, from build/bench/. */
export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const children = new Set<ChildProcess>();

/** A role in its own process; `next(type)` resolves with its next message of that type. */
export class RoleProcess {
  readonly child: ChildProcess;
  readonly #queued: RoleMessage[] = [];
  readonly #waiting: Array<{ type: string; resolve: (message: RoleMessage) => void }> = [];

  constructor(role: Role, args: object = {}) {
    this.child = fork(ROLES, [role, JSON.stringify(args)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    children.add(this.child);
    this.child.once('exit', () => children.delete(this.child));
    this.child.on('message', (message: RoleMessage) => {
      const index = this.#waiting.findIndex((w) => w.type === message.type);
      if (index === -1) this.#queued.push(message);
      else this.#waiting.splice(index, 1)[0]!.resolve(message);
    });
  }

  next<T extends RoleMessage>(type: string): Promise<T> {
    const index = this.#queued.findIndex((m) => m.type === type);
    if (index !== -1) return Promise.resolve(this.#queued.splice(index, 1)[0] as T);
    return new Promise((resolve) => this.#waiting.push({ type, resolve: resolve as (m: RoleMessage) => void }));
  }

  async ask<T extends RoleMessage>(message: RoleMessage): Promise<T> {
    this.child.send(message);
    return this.next<T>(message.type);
  }

  kill(): void {
    this.child.kill('SIGKILL');
  }
}

export function killAll(): void {
  for (const child of children) child.kill('SIGKILL');
}

export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length === 0 ? Number.NaN : sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

export function median(values: number[]): number {
  return percentile(values, 0.5);
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A process whose stdout we watch for a line: Node unless `command` says otherwise, its stderr ours unless `quiet`. */
export function spawnUntil(args: string[], pattern: RegExp, { command = process.execPath, quiet = false } = {}): Promise<{ child: ChildProcess; match: RegExpMatchArray }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', quiet ? 'ignore' : 'inherit'] });
    child.once('error', reject);
    children.add(child);
    child.once('exit', () => children.delete(child));
    child.once('exit', (code) => reject(new Error(`${args[0]} exited with ${code} before printing ${pattern}`)));
    child.stdout!.setEncoding('utf8');
    let buffered = '';
    child.stdout!.on('data', (chunk: string) => {
      buffered += chunk;
      const match = buffered.match(pattern);
      if (match) {
        child.removeAllListeners('exit');
        resolve({ child, match });
      }
    });
  });
}

/** A plain TCP forwarder to `targetPort` in its own Node process: accept, connect, pipe both ways. */
async function plainForwarder(targetPort: number): Promise<{ child: ChildProcess; port: number }> {
  const { child, match } = await spawnUntil(
    [
      '-e',
      `const net = require('node:net');
      net.createServer((user) => {
        const target = net.connect(${targetPort}, '127.0.0.1');
        user.setNoDelay(true);
        target.setNoDelay(true);
        user.on('error', () => target.destroy());
        target.on('error', () => user.destroy());
        user.pipe(target).pipe(user);
      }).listen(0, '127.0.0.1', 2048, function () { console.log('port=' + this.address().port); });`,
    ],
    /port=(\d+)/,
  );
  return { child, port: Number(match[1]) };
}

/**
 * `hops` plain TCP forwarders in a row to `targetPort`, each in its own Node process: no TLS, no WebSocket, no pool,
 * and the relay's default backlog (2,048). `port` is the first one's. Two of them are the cheapest thing a relay and
 * an agent could be, so what they cost is the floor under any design that puts Node processes between a user and a
 * service.
 */
export async function plainForwarders(targetPort: number, hops: number): Promise<{ kill: () => void; port: number }> {
  const chain: ChildProcess[] = [];
  let port = targetPort;
  for (let hop = 0; hop < hops; hop++) {
    const forwarder = await plainForwarder(port);
    chain.push(forwarder.child);
    port = forwarder.port;
  }
  return { kill: () => chain.forEach((child) => child.kill('SIGKILL')), port };
}

/**
 * The Node TLS pipe: two Node processes that only `pipe`, user -> near -> far
 * -> target, TLS 1.3 (EC P-256) between them, one TLS connection per user.
 * The cheapest thing that could stand where a relay and an agent stand, with
 * the same cryptography; `linkPort` puts something (a delaying proxy) between
 * near and far. `port` is near's; `pids` are both processes'.
 */
export async function nodeTlsPipe(targetPort: number, link?: (farPort: number) => Promise<number>): Promise<{ port: number; pids: number[]; kill: () => void }> {
  const { cert, key } = await generateDevCertificate();
  const far = await spawnUntil(
    [
      '-e',
      `const tls = require('node:tls'); const net = require('node:net');
      tls.createServer({ cert: ${JSON.stringify(cert)}, key: ${JSON.stringify(key)}, minVersion: 'TLSv1.3' }, (user) => {
        const target = net.connect({ port: ${targetPort}, host: '127.0.0.1', noDelay: true });
        user.setNoDelay(true);
        user.on('error', () => target.destroy()); target.on('error', () => user.destroy());
        user.pipe(target).pipe(user);
      }).listen(0, '127.0.0.1', 2048, function () { console.log('port=' + this.address().port); });`,
    ],
    /port=(\d+)/,
  );
  const farPort = Number(far.match[1]);
  const upstream = link === undefined ? farPort : await link(farPort);
  const near = await spawnUntil(
    [
      '-e',
      `const tls = require('node:tls'); const net = require('node:net');
      net.createServer({ noDelay: true }, (user) => {
        const upstream = tls.connect({ port: ${upstream}, host: '127.0.0.1', rejectUnauthorized: false, minVersion: 'TLSv1.3' });
        upstream.setNoDelay(true);
        user.on('error', () => upstream.destroy()); upstream.on('error', () => user.destroy());
        user.pipe(upstream).pipe(user);
      }).listen(0, '127.0.0.1', 2048, function () { console.log('port=' + this.address().port); });`,
    ],
    /port=(\d+)/,
  );
  return {
    port: Number(near.match[1]),
    pids: [near.child.pid!, far.child.pid!],
    kill: () => {
      near.child.kill('SIGKILL');
      far.child.kill('SIGKILL');
    },
  };
}

/**
 * Sends `bytes` in 64 KiB writes through `port` to a sink that answers once it
 * has them all; resolves with the MB/s from the first write to the answer.
 */
export async function sendToSink(port: number, bytes: number): Promise<number> {
  const user = connect(port, '127.0.0.1');
  await new Promise((resolve) => user.once('connect', resolve));
  const chunk = Buffer.alloc(64 * 1024, 1);
  const started = performance.now();
  const answered = new Promise((resolve) => user.once('data', resolve));
  for (let sent = 0; sent < bytes; sent += chunk.length) {
    if (!user.write(chunk)) await new Promise((resolve) => user.once('drain', resolve));
  }
  await answered;
  user.destroy();
  return bytes / 1e6 / ((performance.now() - started) / 1000);
}
