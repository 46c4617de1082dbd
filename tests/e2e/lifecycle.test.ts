import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { connect, createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { recordFigure } from '../helpers/figures.js';
import { AGENT_BIN, CliProcess, startAgent, startRelay } from '../helpers/processes.js';
import { REPLY, TargetServers, echoServer, echoThrough, scriptedService, scriptedUser as user, sha256, type UserMode } from '../helpers/tunnel.js';

// Every tunnel ends, in every close order, through the real CLIs: user and
// target here, relay and agent as processes. Afterwards both report no open
// tunnel and hold no more file descriptors than before.

const targets = new TargetServers();
const processes: CliProcess[] = [];

afterAll(async () => {
  await Promise.all(processes.splice(0).map((p) => p.stop('SIGKILL')));
  targets.closeAll();
});

describe.each([['tls'], ['wss']])('every tunnel ends, in every close order (relay and agent as processes, --transport %s)', (transport) => {
  let relay: CliProcess;
  let agent: CliProcess;
  let publicPort: number;
  let baseline: { relay: number; agent: number };

  const settled = async (): Promise<void> => {
    await relay.waitForStatus((s) => s.open === '0' && s.waiting === '0' && s.idle === '8/1024', 10_000);
    await agent.waitForStatus((s) => s.open === '0' && s.idle === '8', 10_000);
  };

  beforeAll(async () => {
    const target = await targets.listen(scriptedService());
    const started = await startRelay(['--status-interval', '50']);
    relay = started.relay;
    publicPort = started.publicPort;
    agent = await startAgent(started.port, target, ['--status-interval', '50', '--min-cap', '8', '--max-cap', '8', '--transport', transport]);
    processes.push(relay, agent);
    // Warm up: one of each before the baseline.
    await user(publicPort, 'reply', 'end-after-reply');
    await settled();
    expect(agent.latestStatus()!.transport).toBe(transport);
    expect(relay.latestStatus()![`pooled-${transport}`]).toBe('8');
    baseline = { relay: relay.fds(), agent: agent.fds() };
  });

  it.each<[string, UserMode, number]>([
    ['reply', 'end-after-reply', REPLY.length],
    ['reply-then-end', 'read-to-eof', REPLY.length],
    ['read-to-eof', 'half-close-then-read', REPLY.length],
    ['reply', 'destroy-before-reply', -1],
    ['reply', 'destroy-after-reply', REPLY.length],
    ['destroy-before', 'read-to-eof', 0],
    ['destroy-after', 'read-to-eof', REPLY.length],
  ])('target %s, user %s: 20 tunnels, then open 0 on both ends and no fd left', async (targetMode, userMode, expectedBytes) => {
    const acceptedBefore = Number(relay.latestStatus()!.accepted);
    const received = await Promise.all(Array.from({ length: 20 }, () => user(publicPort, targetMode, userMode)));
    if (expectedBytes >= 0) expect(received).toEqual(Array(20).fill(expectedBytes));
    // Every user accepted is accounted for: a tunnel that finished, or one that left before it had a connection.
    const accountedFor = (s: Record<string, string>): number => Number(s.finished) + Number(s.departed) + Number(s['no-connection']) + Number(s['no-agent']);
    const status = await relay.waitForStatus((s) => Number(s.accepted) === acceptedBefore + 20 && accountedFor(s) === Number(s.accepted), 5_000);
    expect(Number(status['no-connection']) + Number(status['no-agent'])).toBe(0);
    await settled();
    expect(Number(agent.latestStatus()!.finished)).toBe(Number(agent.latestStatus()!.orders));
    expect(relay.fds()).toBeLessThanOrEqual(baseline.relay);
    expect(agent.fds()).toBeLessThanOrEqual(baseline.agent);
  }, 30_000);
});

describe('half-close through the CLIs, against a direct connection', () => {
  let publicPort: number;
  let targetAddress: { port: number };
  /** Bytes the target read from each connection before the user's end-of-stream, by connection order. */
  const readByTarget: number[] = [];

  beforeAll(async () => {
    // Greets, half-closes at once, then reads until the user ends: the reverse order.
    const service = createServer({ allowHalfOpen: true }, (socket) => {
      socket.on('error', () => {});
      let read = 0;
      socket.on('data', (data: Buffer) => (read += data.length));
      socket.on('end', () => readByTarget.push(read));
      socket.end('banner\n');
    });
    const target = await targets.listen(service);
    targetAddress = { port: Number(target.split(':')[1]) };
    const started = await startRelay();
    processes.push(started.relay);
    publicPort = started.publicPort;
    processes.push(await startAgent(started.port, target));
  });

  async function reverse(port: number): Promise<{ banner: number; targetRead: number }> {
    const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    socket.on('error', () => {});
    let banner = 0;
    socket.on('data', (data: Buffer) => (banner += data.length));
    await once(socket, 'end');
    const count = readByTarget.length;
    socket.end(randomBytes(1024 * 1024));
    await once(socket, 'close');
    for (let i = 0; i < 200 && readByTarget.length === count; i++) await sleep(10);
    return { banner, targetRead: readByTarget[count]! };
  }

  it('the target half-closes first: the user still sends 1 MiB, and all of it arrives, as directly', async () => {
    const direct = await reverse(targetAddress.port);
    const tunnelled = await reverse(publicPort);
    expect(direct).toEqual({ banner: 7, targetRead: 1024 * 1024 });
    expect(tunnelled).toEqual(direct);
  });

  it('the user half-closes after its request (nc -N): it reads the whole reply, as directly', async () => {
    const service = createServer({ allowHalfOpen: true }, (socket) => {
      socket.on('error', () => {});
      socket.resume();
      socket.on('end', () => socket.end(REPLY));
    });
    const target = await targets.listen(service);
    const started = await startRelay();
    processes.push(started.relay);
    processes.push(await startAgent(started.port, target));
    const ask = async (port: number): Promise<number> => {
      const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
      socket.on('error', () => {});
      let received = 0;
      socket.on('data', (data: Buffer) => (received += data.length));
      socket.end('GET / HTTP/1.0\r\n\r\n');
      await once(socket, 'end');
      socket.destroy();
      return received;
    };
    const direct = await ask(Number(target.split(':')[1]));
    expect(direct).toBe(65_536);
    expect(await ask(started.publicPort)).toBe(direct);
  });
});

describe('recovery and bursts with the CLIs\' defaults', () => {
  afterEach(async () => {
    await Promise.all(processes.splice(0).map((p) => p.stop('SIGKILL')));
  });

  it('after a relay restart, the agent comes back by itself and users are served again (how soon: a figure)', async () => {
    const service = (await import('node:http')).createServer((_req, res) => res.end('ok'));
    const target = await targets.listen(service);
    const { relay, port, publicPort } = await startRelay();
    processes.push(relay);
    // The agent's own defaults: no interval flags.
    const agent = new CliProcess(AGENT_BIN, ['--server', `127.0.0.1:${port}`, '--target', target, '--tls', 'insecure', '--status-interval', '0']);
    processes.push(agent);
    await agent.waitFor(/control connected/, 10_000, true);
    const get = async (): Promise<boolean> =>
      request(`http://127.0.0.1:${publicPort}/`, { reset: true, headersTimeout: 3_000, bodyTimeout: 3_000 }).then(
        async (response) => (await response.body.text()) === 'ok',
        () => false,
      );
    expect(await get()).toBe(true);
    await relay.stop('SIGKILL');
    await agent.waitFor(/control disconnected/, 5_000, true);
    // Long enough for the agent's back-off to reach its ceiling.
    await sleep(6_000);
    const { relay: again } = await startRelay(['--port', String(port), '--public-port', String(publicPort)]);
    processes.push(again);
    const listening = Date.now();
    let served = false;
    for (let attempt = 0; attempt < 60 && !served; attempt++) {
      served = await get();
      if (!served) await sleep(50);
    }
    // How soon is a figure for the report, not an assertion: a busy machine may take longer.
    recordFigure('lifecycle', 'after a relay restart, first user served after it listened', Date.now() - listening, 'ms');
    expect(served).toBe(true);
  }, 30_000);

  it('50 users at once with minCap 1 and a slow interval are all served: the agent dials for them in one go', async () => {
    const target = await targets.listen(echoServer());
    const { relay, port, publicPort } = await startRelay(['--status-interval', '50']);
    processes.push(relay);
    const agent = await startAgent(port, target, ['--status-interval', '50', '--min-cap', '1', '--max-cap', '64', '--min-interval', '5000', '--max-interval', '5000']);
    processes.push(agent);
    await relay.waitForStatus((s) => s.idle === '1/1024', 10_000);
    const payloads = Array.from({ length: 50 }, () => randomBytes(1024));
    const started = Date.now();
    const echoed = await Promise.all(payloads.map((payload) => echoThrough(publicPort, payload))).catch((error: Error) => {
      // What both processes said, for whoever has to find out why a user was turned away.
      throw new Error(`${error.message}\nrelay:\n${relay.lines.slice(-20).join('\n')}\nagent:\n${agent.lines.slice(-40).join('\n')}`);
    });
    recordFigure('lifecycle', '50 users at once with minCap 1: all served after', Date.now() - started, 'ms');
    expect(echoed).toEqual(payloads.map(sha256));
    const status = await agent.waitForStatus((s) => Number(s.finished) === 50, 5_000);
    expect(Number(status.demands)).toBeGreaterThanOrEqual(1);
    expect(Number(status['demand-dials'])).toBeGreaterThanOrEqual(40);
    // Served by demand within the relay's get timeout (none turned away), not one per 5 s round.
    expect(relay.latestStatus()!['no-connection']).toBe('0');
  }, 30_000);
});
