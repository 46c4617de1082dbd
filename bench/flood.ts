import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import WebSocket from 'ws';
import { ROOT, sleep, spawnUntil } from './lib.js';

/** What holding a flood of waiting users cost one process. */
export interface FloodOutcome {
  /** RSS growth from before the flood to its peak, in bytes. */
  rssGrowth: number;
  /** Users closed at once because the waiting places were taken. */
  refused: number;
}

export interface FloodRow {
  users: number;
  bytesEach: number;
  relay: FloodOutcome;
  floor: FloodOutcome;
}

const TOKEN = 'bench-flood-token-0123456789';
const PAYLOAD_BYTES = 64 * 1024;
/** The relay's defaults, which the floor keeps too. */
const WAITING_CAP = 1_024;
const READ_BEFORE_PAUSE = 16 * 1024;

const rssOf = (pid: number | undefined): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) * 1024;

/** `count` users that each connect and send 64 KiB (one shared buffer); resolves once every one was accepted or refused. */
async function flood(port: number, count: number): Promise<{ sockets: Socket[]; refused: () => number }> {
  const payload = Buffer.alloc(PAYLOAD_BYTES, 0x61);
  const sockets: Socket[] = [];
  let refused = 0;
  for (let i = 0; i < count; i++) {
    const socket = connect(port, '127.0.0.1');
    socket.on('error', () => {});
    // Closed by the other end before we close it: refused.
    socket.once('close', () => refused++);
    socket.write(payload);
    sockets.push(socket);
    if (i % 500 === 499) await sleep(20);
  }
  return { sockets, refused: () => refused };
}

/** Floods `port`, samples `pid`'s RSS until it settles, and closes the users. */
async function measure(pid: number | undefined, port: number, users: number): Promise<FloodOutcome> {
  const before = rssOf(pid);
  const { sockets, refused } = await flood(port, users);
  let peak = rssOf(pid);
  // Until the count of refused users has held still for a second (at most 60 s).
  for (let settled = 0, last = -1, rounds = 0; settled < 5 && rounds < 300; rounds++) {
    await sleep(200);
    peak = Math.max(peak, rssOf(pid));
    settled = refused() === last ? settled + 1 : 0;
    last = refused();
  }
  const outcome = { rssGrowth: peak - before, refused: refused() };
  for (const socket of sockets) {
    socket.removeAllListeners('close');
    socket.destroy();
  }
  return outcome;
}

/**
 * 9. A flood of users that each send 64 KiB while no pooled connection is
 * free (an agent holds its control channel and never dials): the relay's RSS
 * growth, beside the floor, a plain Node TCP server that keeps the same caps
 * (1,024 waiting, each read for 16 KiB and then paused, the rest closed at once).
 */
export async function floodOfWaitingUsers(users: number): Promise<FloodRow> {
  const relay = await spawnUntil(
    [`${ROOT}packages/server/dist/bin/pool-relay.js`, '--host', '127.0.0.1', '--public-host', '127.0.0.1', '--port', '0', '--public-port', '0', '--token', TOKEN,
      '--max-waiting-per-source', String(WAITING_CAP), '--get-timeout', '30000', '--status-interval', '0', '--log-level', 'error'],
    / ready port=(\d+) public-port=(\d+)/,
  );
  let relayOutcome: FloodOutcome;
  const control = new WebSocket(`wss://127.0.0.1:${relay.match[1]}/control`, {
    rejectUnauthorized: false,
    perMessageDeflate: false,
    headers: { 'x-pool-token': TOKEN, 'x-pool-agent-id': randomUUID(), 'x-pool-control-features': 'claimed,demand,session' },
  });
  control.on('error', () => {});
  try {
    await once(control, 'message');
    relayOutcome = await measure(relay.child.pid, Number(relay.match[2]), users);
  } finally {
    control.terminate();
    relay.child.kill('SIGKILL');
  }
  const floor = await spawnUntil(
    [
      '-e',
      `let waiting = 0;
      require('node:net').createServer((user) => {
        user.on('error', () => {});
        if (waiting >= ${WAITING_CAP}) return user.destroy();
        waiting++;
        user.once('close', () => waiting--);
        let read = 0;
        user.on('data', (chunk) => { read += chunk.length; if (read >= ${READ_BEFORE_PAUSE}) user.pause(); });
      }).listen(0, '127.0.0.1', 2048, function () { console.log('port=' + this.address().port); });`,
    ],
    /port=(\d+)/,
  );
  try {
    return { users, bytesEach: PAYLOAD_BYTES, relay: relayOutcome, floor: await measure(floor.child.pid, Number(floor.match[1]), users) };
  } finally {
    floor.child.kill('SIGKILL');
  }
}
