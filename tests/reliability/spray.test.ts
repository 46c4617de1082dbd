import { afterAll, describe, expect, it } from '@jest/globals';
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { recordFigure } from '../helpers/figures.js';
import { freePorts } from '../helpers/ports.js';
import { AGENT_BIN, CliProcess, RELAY_BIN } from '../helpers/processes.js';
import { TargetServers, echoServer, echoThrough, sha256 } from '../helpers/tunnel.js';
import { boundUdpSocket } from '../helpers/udp.js';

// A spray of UDP sources at a service, through the real CLIs with their
// defaults: the flows share a few pooled connections, so the spray costs the
// agent table entries and sockets (one address holds a sixteenth of the
// table), not TLS dials; a user from another address and the TCP users of the
// same agent are served throughout.

const TOKEN = 'spray-token-0123456789abcdef';
const SOURCES = 5_000;
const processes: CliProcess[] = [];
const targets = new TargetServers();
const sockets: UdpSocket[] = [];

afterAll(async () => {
  await Promise.all(processes.splice(0).map((p) => p.stop('SIGKILL')));
  targets.closeAll();
  for (const socket of sockets.splice(0)) socket.close();
});

const openFds = (cli: CliProcess): number => readdirSync(`/proc/${cli.child.pid}/fd`).length;

/** A UDP echo on 127.0.0.1; its port. */
async function udpEcho(): Promise<number> {
  const echo = await boundUdpSocket();
  sockets.push(echo);
  echo.on('message', (datagram: Buffer, from: RemoteInfo) => echo.send(datagram, from.port, from.address));
  return echo.address().port;
}

/** Sends from `socket` until answered (at most 5 tries, 1 s apart); the reply or undefined. */
async function ask(socket: UdpSocket, port: number, text: string): Promise<string | undefined> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const reply = once(socket, 'message', { signal: AbortSignal.timeout(1_000) }).catch(() => undefined);
    socket.send(text, port, '127.0.0.1');
    const answered = await reply;
    if (answered !== undefined) return String(answered[0]);
  }
  return undefined;
}

/** `SOURCES` sockets on 127.0.0.1, 250 at a time, each sending one 64-byte datagram from its own port and closing. */
async function spray(port: number, onRound: () => void): Promise<void> {
  const datagram = Buffer.alloc(64, 0x73);
  for (let sent = 0; sent < SOURCES; sent += 250) {
    const round = await Promise.all(Array.from({ length: 250 }, () => boundUdpSocket()));
    await Promise.all(round.map((socket) => new Promise<void>((resolve) => socket.send(datagram, port, '127.0.0.1', () => resolve()))));
    for (const socket of round) socket.close();
    onRound();
    await sleep(10);
  }
}

describe('a spray of UDP sources at a service', () => {
  it(`${SOURCES} sources: no dial for them, the agent's descriptors bounded, another address and the TCP users served throughout`, async () => {
    const [udpPort, tcpPort] = await freePorts(2);
    const dir = mkdtempSync(join(tmpdir(), 'pool-spray-'));
    const config = join(dir, 'relay.yaml');
    writeFileSync(
      config,
      `listen: 127.0.0.1:0
agents:
  edge: { token: "${TOKEN}" }
services:
  - { name: dns, agent: edge, public: "127.0.0.1:${udpPort}", protocol: udp }
  - { name: web, agent: edge, public: "127.0.0.1:${tcpPort}" }
`,
    );
    const relay = new CliProcess(RELAY_BIN, ['--config', config, '--status-interval', '100']);
    processes.push(relay);
    const port = Number((await relay.waitFor(/ready port=(\d+)/, 10_000, true))[1]);
    const udpTarget = await udpEcho();
    const tcpTarget = await targets.listen(echoServer());
    const agent = new CliProcess(AGENT_BIN, [
      '--server', `127.0.0.1:${port}`, '--tls', 'insecure', '--name', 'edge', '--token', TOKEN, '--status-interval', '100',
      '--service', `dns=127.0.0.1:${udpTarget}`, '--service', `web=${tcpTarget}`,
    ]);
    processes.push(agent);
    await agent.waitFor(/control connected/, 10_000, true);

    // A first user of each kind, so that the baseline has the UDP carrier and the pool warm.
    const other = createSocket('udp4');
    sockets.push(other);
    other.bind(0, '127.0.0.2');
    await once(other, 'listening');
    expect(await ask(other, udpPort, 'before')).toBe('before');
    const payload = Buffer.alloc(4_096, 0x77);
    expect(await echoThrough(tcpPort, payload)).toBe(sha256(payload));
    await sleep(500);
    const fdsBefore = openFds(agent);
    const dialsBefore = Number((await agent.waitForStatus((s) => s.dials !== undefined, 5_000)).dials);

    let fdsPeak = fdsBefore;
    const otherAnswers: Array<string | undefined> = [];
    const tcpTimes: number[] = [];
    let tcpServed = 0;
    let spraying = true;
    let servedDuringSpray = 0;
    await Promise.all([
      spray(udpPort, () => (fdsPeak = Math.max(fdsPeak, openFds(agent)))).finally(() => (spraying = false)),
      (async () => {
        for (let i = 0; i < 5; i++) {
          otherAnswers.push(await ask(other, udpPort, `during ${i}`));
          const started = performance.now();
          if ((await echoThrough(tcpPort, payload)) === sha256(payload)) tcpServed++;
          tcpTimes.push(performance.now() - started);
          if (spraying) servedDuringSpray++;
        }
      })(),
    ]);
    const relayStatus = await relay.waitForStatus((s) => s.flows !== undefined, 5_000);
    const agentStatus = await agent.waitForStatus((s) => s.dials !== undefined, 5_000);

    recordFigure('spray', 'agent fds before / peak', `${fdsBefore} / ${fdsPeak}`);
    recordFigure('spray', 'agent dials during the spray', Number(agentStatus.dials) - dialsBefore);
    recordFigure('spray', 'TCP echo through the same agent, slowest', Math.round(Math.max(...tcpTimes)), 'ms');
    recordFigure('spray', 'relay flows open / evicted / carriers', `${relayStatus.flows} / ${relayStatus['flows-evicted']} / ${relayStatus.carriers}`);
    recordFigure('spray', 'rounds of the other users finished while the spray went on', servedDuringSpray);
    expect(Number(relayStatus['flows-evicted'])).toBeGreaterThan(SOURCES / 2);
    expect(otherAnswers).toEqual([0, 1, 2, 3, 4].map((i) => `during ${i}`));
    expect(tcpServed).toBe(5);
    expect(fdsPeak - fdsBefore).toBeLessThanOrEqual(128);
    // Flows share the carrier: the spray costs the agent no more than a few new pooled connections.
    expect(Number(agentStatus.dials) - dialsBefore).toBeLessThanOrEqual(8);
  }, 120_000);
});
