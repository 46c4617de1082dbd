import { afterEach, describe, expect, it } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { recordFigure } from '../helpers/figures.js';
import { AGENT_BIN, CliProcess, startAgent, startRelay } from '../helpers/processes.js';
import { TargetServers } from '../helpers/tunnel.js';

// Who the agent is: a copy of its token must not take its users, two processes
// with one token must not fight, a restart must not wait, and a pinned key
// must be the agent whatever the token. The real CLIs as processes; each
// target greets with its own name, so a user can tell which process served it.

const TOKEN = 'identity-token-0123456789abcdef';
const targets = new TargetServers();
const processes: CliProcess[] = [];

afterEach(async () => {
  await Promise.all(processes.splice(0).map((p) => p.stop('SIGKILL')));
  targets.closeAll();
});

/** A target that greets with its name, then ends; or, with `hold`, keeps the connection open until the user ends it. */
function named(name: string, hold = false): Server {
  return createServer({ allowHalfOpen: false }, (socket) => {
    socket.on('error', () => {});
    if (hold) socket.write(`${name}\n`);
    else socket.end(`${name}\n`);
    socket.resume();
  });
}

/** The name of the target one user reached, or `refused` when the relay closed it without one. */
function userLands(publicPort: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(publicPort, '127.0.0.1');
    let text = '';
    socket.on('error', () => {});
    socket.on('data', (data: Buffer) => (text += data.toString()));
    socket.once('close', () => resolve(text.split('\n')[0] || 'refused'));
  });
}

async function tally(publicPort: number, users: number): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (let i = 0; i < users; i++) {
    const name = await userLands(publicPort);
    counts[name] = (counts[name] ?? 0) + 1;
  }
  return counts;
}

/** Users one after another until one reaches `name` (bounded); resolves with the ms it took. */
async function servedBy(publicPort: number, name: string, timeoutMs = 10_000): Promise<number> {
  const started = performance.now();
  while (performance.now() - started < timeoutMs) {
    if ((await userLands(publicPort)) === name) return performance.now() - started;
    await sleep(20);
  }
  throw new Error(`no user reached ${name} within ${timeoutMs} ms`);
}

/** Waits for `agent`'s control channel, then for a user served by it (its target greets with `name`); the ms between the two. */
async function servedOnceConnected(agent: CliProcess, publicPort: number, name: string): Promise<number> {
  await agent.waitFor(/control connected/, 10_000, true);
  const connectedAt = performance.now();
  await servedBy(publicPort, name);
  return performance.now() - connectedAt;
}

async function relayWith(args: string[] = []): Promise<{ relay: CliProcess; port: number; publicPort: number }> {
  const started = await startRelay(['--token', TOKEN, '--status-interval', '100', ...args]);
  processes.push(started.relay);
  return started;
}

async function agentTo(port: number, name: string, args: string[] = [], waitForControl = true, hold = false): Promise<CliProcess> {
  const agent = await startAgent(port, await targets.listen(named(name, hold)), ['--token', TOKEN, '--status-interval', '100', ...args], waitForControl);
  processes.push(agent);
  return agent;
}

/** Lines at level warn or above that a process wrote. */
const warnings = (cli: CliProcess): number => cli.lines.filter((line) => /"level":"(warn|error)"/.test(line)).length;

describe('identity: a token holder who is not the live agent', () => {
  it('a persistent impostor with the copied token gets 0 users and is refused with 409 while the agent lives', async () => {
    const { relay, port, publicPort } = await relayWith();
    const agent = await agentTo(port, 'real');
    await servedBy(publicPort, 'real');
    // An impostor that speaks the protocol: it opens a control channel again the moment it is refused or dropped,
    // and tries pooled connections too, while real users arrive.
    const statuses: number[] = [];
    let sessions = 0;
    let stop = false;
    const impostor = (async () => {
      for (let attempt = 0; attempt < 400 && !stop; attempt++) {
        const path = attempt % 2 ? '/' : '/control';
        const ws = new WebSocket(`wss://127.0.0.1:${port}${path}`, {
          rejectUnauthorized: false,
          perMessageDeflate: false,
          headers: { 'x-pool-token': TOKEN, 'x-pool-agent-id': randomUUID(), 'x-pool-control-features': 'claimed,demand,session,flows' },
        });
        ws.on('error', () => {});
        ws.on('message', () => sessions++);
        statuses.push(
          await new Promise<number>((resolve) => {
            ws.once('unexpected-response', (_request, response) => {
              response.resume();
              resolve(response.statusCode ?? 0);
            });
            ws.once('open', () => resolve(101));
            ws.once('close', () => resolve(0));
          }),
        );
        ws.terminate();
      }
    })();
    const counts = await tally(publicPort, 100);
    stop = true;
    await impostor;
    recordFigure('identity', 'users while a persistent impostor held the token (of 100)', JSON.stringify(counts));
    expect(counts).toEqual({ real: 100 });
    expect(sessions).toBe(0);
    expect(statuses.length).toBeGreaterThan(4);
    // Control attempts get 409 (the agent answers), pooled ones 401 (no session).
    expect(new Set(statuses.filter((_, i) => i % 2 === 0))).toEqual(new Set([409]));
    expect(new Set(statuses.filter((_, i) => i % 2 === 1))).toEqual(new Set([401]));
    const status = await relay.waitForStatus((s) => Number(s.conflicts) > 0, 5_000);
    expect(status.replaced).toBe('0');
    expect(agent.latestStatus()?.control).toBe('up');
  }, 60_000);

  it('two real agents with one token: no replacement, a few warning lines, one serves and the other says it is on standby', async () => {
    const { relay, port, publicPort } = await relayWith();
    const first = await agentTo(port, 'first');
    const second = await agentTo(port, 'second', [], false);
    await second.waitFor(/standby: another process is connected to the relay as this agent/, 10_000, true);
    const counts = await tally(publicPort, 50);
    await sleep(5_000);
    counts.first = (counts.first ?? 0) + ((await tally(publicPort, 50)).first ?? 0);
    recordFigure('identity', 'two agents with one token: users by agent (of 100)', JSON.stringify(counts));
    expect(counts).toEqual({ first: 100 });
    expect(relay.latestStatus()!.replaced).toBe('0');
    expect((await second.waitForStatus(() => true, 5_000)).control).toBe('standby');
    expect((await first.waitForStatus(() => true, 5_000)).control).toBe('up');
    // Retries seconds apart, each logged once: the three processes stay quiet.
    const lines = warnings(relay) + warnings(first) + warnings(second);
    recordFigure('identity', 'two agents with one token for ~7 s: warning lines (relay + both agents)', lines);
    expect(lines).toBeLessThanOrEqual(6);
    expect(Number(relay.latestStatus()!.conflicts)).toBeLessThanOrEqual(8);
    // The first one goes for good (SIGKILL: no leave): the second takes over once its probe goes unanswered.
    await first.stop('SIGKILL');
    await second.waitForStatus((s) => s.control === 'up', 10_000);
    await servedBy(publicPort, 'second');
  }, 60_000);

  it('an agent restarted while the old one drains is served as soon as it connects', async () => {
    const { relay, port, publicPort } = await relayWith();
    const old = await agentTo(port, 'old', ['--drain-timeout', '8000'], true, true);
    // A tunnel held open keeps the old process draining for its whole drain timeout.
    const held = connect(publicPort, '127.0.0.1');
    held.on('error', () => {});
    await new Promise((resolve) => held.once('data', resolve));
    old.child.kill('SIGTERM');
    await relay.waitFor(/agent left: it drains/, 5_000, true);
    // A user who arrives between the old one leaving and the new one connecting waits for the new one.
    const between = userLands(publicPort);
    const ms = await servedOnceConnected(await agentTo(port, 'new', [], false), publicPort, 'new');
    recordFigure('identity', 'restart beside a draining agent: first user served after the new agent connected', Math.round(ms), 'ms');
    // Served while the old process still drains (its open tunnel keeps it for 8 s), and without a probe.
    expect(await between).toBe('new');
    expect(old.child.exitCode).toBeNull();
    expect(relay.latestStatus()!.replaced).toBe('0');
    held.destroy();
  }, 60_000);

  it('with a pinned key, the token alone gets nothing, even while the agent is down; the real agent back is served', async () => {
    const keyDir = mkdtempSync(join(tmpdir(), 'pool-agent-key-'));
    // The agent makes its key on the first start and prints the fingerprint the relay pins.
    const probe = new CliProcess(
      AGENT_BIN,
      ['--server', '127.0.0.1:1', '--target', '127.0.0.1:1', '--tls', 'insecure', '--key-dir', keyDir, '--status-interval', '0', '--log-level', 'off'],
    );
    processes.push(probe);
    const fingerprint = (await probe.waitFor(/key made and kept in .*agent\.crt: the relay pins it with fingerprint (\S+)/, 10_000, true))[1]!;
    await probe.stop('SIGKILL');
    const { relay, port, publicPort } = await relayWith(['--agent-fingerprint', fingerprint]);
    const agent = await agentTo(port, 'real', ['--key-dir', keyDir]);
    expect(agent.lines.join('\n')).toContain(`key kept in ${keyDir}/agent.crt: the relay pins it with fingerprint ${fingerprint}`);
    await servedBy(publicPort, 'real');
    await agent.stop('SIGKILL');
    await relay.waitForStatus((s) => s.agent === 'down', 5_000);
    // The agent is down, and a process with the token but without the key tries to be it.
    const impostor = await agentTo(port, 'impostor', [], false);
    await impostor.waitFor(/control channel failed: .*HTTP 403/, 10_000, true);
    const counts = await tally(publicPort, 20);
    expect(counts).toEqual({ refused: 20 });
    await relay.waitFor(/agent default has a pinned key, and this connection did not present it/, 5_000, true);
    // The real agent, back, with its key.
    const ms = await servedOnceConnected(await agentTo(port, 'real-again', ['--key-dir', keyDir], false), publicPort, 'real-again');
    recordFigure('identity', 'pinned key: the real agent back, first user served after it connected', Math.round(ms), 'ms');
    expect(impostor.latestStatus()?.control).toBe('down');
  }, 60_000);
});
