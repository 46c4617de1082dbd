import { createSocket, type Socket } from 'node:dgram';
import { once } from 'node:events';
import { ROOT, sleep, spawnUntil } from './lib.js';

/** One run at a fixed offered rate: what came back. */
export interface UdpOutcome {
  offeredPerSecond: number;
  sent: number;
  received: number;
  /** Datagrams that never came back, as a share of those sent. */
  loss: number;
  /** Replies per second over the sending window. */
  deliveredPerSecond: number;
}

export interface UdpRow {
  offeredPerSecond: number;
  bytes: number;
  flows: number;
  tunnel: UdpOutcome;
  direct: UdpOutcome;
}

/** Sends `rate` datagrams per second of `bytes` each, spread over `flows` sockets, for `seconds`; counts the echoes. */
async function offer(port: number, rate: number, bytes: number, flows: number, seconds: number): Promise<UdpOutcome> {
  const sockets: Socket[] = [];
  let received = 0;
  for (let i = 0; i < flows; i++) {
    const socket = createSocket('udp4');
    socket.on('message', () => received++);
    socket.bind(0, '127.0.0.1');
    await once(socket, 'listening');
    sockets.push(socket);
  }
  const payload = Buffer.alloc(bytes, 0x61);
  // One datagram per socket first, answered before the clock starts: the runs measure datagrams, not flow set-up.
  for (const socket of sockets) socket.send(payload, port, '127.0.0.1');
  for (let waited = 0; received < flows && waited < 5_000; waited += 10) await sleep(10);
  received = 0;
  // Paced in 5 ms ticks, each sending what the rate owes by then: a fixed offered load, not a flood.
  const started = performance.now();
  let sent = 0;
  await new Promise<void>((resolve) => {
    const tick = setInterval(() => {
      const elapsed = (performance.now() - started) / 1000;
      const due = Math.min(rate * seconds, Math.floor(rate * elapsed));
      for (; sent < due; sent++) sockets[sent % flows]!.send(payload, port, '127.0.0.1');
      if (sent >= rate * seconds) {
        clearInterval(tick);
        resolve();
      }
    }, 5);
  });
  const window = (performance.now() - started) / 1000;
  await sleep(1_000); // the last replies
  for (const socket of sockets) socket.close();
  return { offeredPerSecond: rate, sent, received, loss: (sent - received) / sent, deliveredPerSecond: received / window };
}

/**
 * 8. UDP: a UDP echo target (its own process); the relay with `--udp` and the
 * agent, each its own process, self-signed TLS between them. At each offered
 * rate, `flows` user sockets send datagrams of `bytes` through the tunnel for
 * `seconds`, then the same straight to the target; each reports what came back.
 */
export async function udpThroughTunnel(rates: number[], bytes: number, flows: number, seconds: number): Promise<UdpRow[]> {
  const target = await spawnUntil(
    ['-e', `const s = require('node:dgram').createSocket('udp4'); s.on('message', (m, r) => s.send(m, r.port, r.address)); s.bind(0, '127.0.0.1', () => console.log('port=' + s.address().port));`],
    /port=(\d+)/,
  );
  const targetPort = Number(target.match[1]);
  const relay = await spawnUntil(
    [`${ROOT}packages/server/dist/bin/pool-relay.js`, '--udp', '--host', '127.0.0.1', '--public-host', '127.0.0.1', '--port', '0', '--public-port', '0', '--status-interval', '0', '--log-level', 'warn'],
    / ready port=(\d+) public-port=(\d+)/,
  );
  const [port, publicPort] = [Number(relay.match[1]), Number(relay.match[2])];
  const agent = await spawnUntil(
    [`${ROOT}packages/client/dist/bin/pool-agent.js`, '--server', `127.0.0.1:${port}`, '--target', `127.0.0.1:${targetPort}`, '--tls', 'insecure', '--status-interval', '0', '--log-level', 'warn'],
    /control connected/,
  );
  const rows: UdpRow[] = [];
  try {
    for (const rate of rates) {
      const tunnel = await offer(publicPort, rate, bytes, flows, seconds);
      const direct = await offer(targetPort, rate, bytes, flows, seconds);
      rows.push({ offeredPerSecond: rate, bytes, flows, tunnel, direct });
    }
  } finally {
    for (const child of [agent.child, relay.child, target.child]) child.kill('SIGKILL');
  }
  return rows;
}
