import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { once } from 'node:events';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { V1ProxyProtocol, V2ProxyProtocol } from 'proxy-protocol-js';
import { request } from 'undici';
import WebSocket from 'ws';
import { AGENT_BIN, CliProcess, RELAY_BIN } from '../helpers/processes.js';
import { freePorts } from '../helpers/ports.js';
import { TargetServers } from '../helpers/tunnel.js';

// One relay, two agents, four services, from a YAML configuration: the real
// CLIs as processes. Each target answers with its own name, so a user can
// tell where it landed.

const EAST_TOKEN = 'east-secret-0123456789abcdef';
const WEST_TOKEN = 'west-secret-0123456789abcdef';
const ROTATED_EAST_TOKEN = 'east-rotated-0123456789abcdef';
const targets = new TargetServers();
const processes: CliProcess[] = [];
const dir = mkdtempSync(join(tmpdir(), 'pool-multi-'));
const configFile = join(dir, 'relay.yaml');
let relay: CliProcess;
let port: number;
let portOf: Record<string, number>;
let targetOf: Record<string, string>;
/** What PROXY-aware targets parsed, by service. */
const proxied: Record<string, Array<{ address: string; port: number }>> = {};

/** A target that greets with its name and then echoes. */
function namedService(name: string): Server {
  return createServer((socket) => {
    socket.on('error', () => {});
    socket.write(`${name}\n`);
    socket.pipe(socket);
  });
}

/** A target that expects a PROXY header (v1 or v2, parsed by an independent library), records the source, then echoes. */
function proxyService(name: string, version: 'v1' | 'v2'): Server {
  proxied[name] = [];
  return createServer((socket) => {
    socket.on('error', () => {});
    let buffered = Buffer.alloc(0);
    const onData = (data: Buffer): void => {
      buffered = Buffer.concat([buffered, data]);
      const length = version === 'v1' ? buffered.indexOf('\r\n') + 2 : buffered.length >= 16 ? 16 + buffered.readUInt16BE(14) : -1;
      if (length <= 1 || buffered.length < length) return;
      socket.removeListener('data', onData);
      const header = buffered.subarray(0, length);
      if (version === 'v1') {
        const parsed = V1ProxyProtocol.parse(header.toString('latin1'));
        proxied[name]!.push({ address: parsed.source.ipAddress, port: parsed.source.port });
      } else {
        const parsed = V2ProxyProtocol.parse(header);
        const address = parsed.proxyAddress as unknown as { sourceAddress: { address: number[] }; sourcePort: number };
        const bytes = address.sourceAddress.address;
        const text = bytes.length === 4 ? bytes.join('.') : Array.from({ length: 8 }, (_, i) => ((bytes[2 * i]! << 8) | bytes[2 * i + 1]!).toString(16)).join(':');
        proxied[name]!.push({ address: text, port: address.sourcePort });
      }
      socket.write(`${name}\n`);
      socket.write(buffered.subarray(length));
      socket.pipe(socket);
    };
    socket.on('data', onData);
  });
}

function config(services: string, eastToken = '${EAST_TOKEN}'): string {
  return `listen: 127.0.0.1:0
agents:
  east: { token: "${eastToken}" }
  west: { token: "${WEST_TOKEN}" }
services:
${services}`;
}

const SERVICES = (ports: { web: number; db: number; ssh: number; mail: number; v1: number; v2: number }): string => `  - { name: web, agent: east, public: "127.0.0.1:${ports.web}" }
  - { name: db, agent: east, public: "127.0.0.1:${ports.db}" }
  - { name: ssh, agent: west, public: "127.0.0.1:${ports.ssh}" }
  - { name: mail, agent: west, public: "127.0.0.1:${ports.mail}" }
  - { name: pv1, agent: west, public: "[::1]:${ports.v1}", proxyProtocol: v1 }
  - { name: pv2, agent: west, public: "127.0.0.1:${ports.v2}", proxyProtocol: v2 }
`;

function startAgent(name: string, token: string, services: Record<string, string>, extra: string[] = []): CliProcess {
  const agent = new CliProcess(AGENT_BIN, [
    '--server', `127.0.0.1:${port}`, '--tls', 'insecure', '--name', name, '--token', token, '--status-interval', '0',
    '--min-interval', '50', '--max-interval', '1000', ...Object.entries(services).flatMap(([service, target]) => ['--service', `${service}=${target}`]), ...extra,
  ]);
  processes.push(agent);
  return agent;
}

/** Opens a WebSocket to the relay's agents' port; resolves with the HTTP status of the answer (101 when it opened). */
function upgradeStatus(path: string, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`wss://127.0.0.1:${port}${path}`, { rejectUnauthorized: false, perMessageDeflate: false, headers });
    ws.on('error', () => resolve(0));
    ws.once('unexpected-response', (_request, response) => {
      response.resume();
      resolve(response.statusCode ?? 0);
    });
    ws.once('open', () => {
      ws.terminate();
      resolve(101);
    });
  });
}

/** Connects to a service's public port and reads the target's greeting line. */
async function greeting(publicPort: number, host = '127.0.0.1'): Promise<{ name: string; socket: Socket }> {
  const socket = connect(publicPort, host);
  socket.on('error', () => {});
  let text = '';
  await new Promise<void>((resolve, reject) => {
    socket.on('data', (data: Buffer) => {
      text += data.toString();
      if (text.includes('\n')) resolve();
    });
    socket.once('close', () => reject(new Error(`closed before a greeting on port ${publicPort}`)));
  });
  return { name: text.split('\n')[0]!, socket };
}

let east: CliProcess;
let west: CliProcess;

beforeAll(async () => {
  targetOf = {
    web: await targets.listen(namedService('web')),
    db: await targets.listen(namedService('db')),
    ssh: await targets.listen(namedService('ssh')),
    mail: await targets.listen(namedService('mail')),
    pv1: await targets.listen(proxyService('pv1', 'v1')),
    pv2: await targets.listen(proxyService('pv2', 'v2')),
  };
  const [web, db, ssh, mail, v2] = await freePorts(5);
  const [v1] = await freePorts(1, '::1');
  writeFileSync(configFile, config(SERVICES({ web: web!, db: db!, ssh: ssh!, mail: mail!, v1: v1!, v2: v2! })));
  // The configuration names east's token by environment variable, as an operator would keep it.
  relay = new CliProcess(RELAY_BIN, ['--config', configFile, '--status-interval', '100', '--metrics-port', '0'], [], { EAST_TOKEN });
  processes.push(relay);
  const ready = await relay.waitFor(/ready port=(\d+) .*services=(\S+)/, 10_000, true);
  port = Number(ready[1]);
  portOf = Object.fromEntries(ready[2]!.split(',').map((entry) => [entry.split(':')[0]!, Number(entry.split(':')[1])]));
  east = startAgent('east', EAST_TOKEN, { web: targetOf.web!, db: targetOf.db! });
  west = startAgent('west', WEST_TOKEN, { ssh: targetOf.ssh!, mail: targetOf.mail!, pv1: targetOf.pv1!, pv2: targetOf.pv2! });
  await relay.waitForStatus((s) => s['agents-up'] === 'east,west' || s['agents-up'] === 'west,east', 10_000);
}, 30_000);

afterAll(async () => {
  await Promise.all(processes.splice(0).map((p) => p.stop('SIGKILL')));
  targets.closeAll();
});

describe('one relay, two agents, several services (pool-relay --config)', () => {
  it('every user reaches the target of the service it connected to', async () => {
    for (let round = 0; round < 5; round++) {
      for (const service of ['web', 'db', 'ssh', 'mail']) {
        const { name, socket } = await greeting(portOf[service]!);
        expect(name).toBe(service);
        socket.destroy();
      }
    }
  });

  it('publishes metrics per agent and per service', async () => {
    const metricsPort = Number((await relay.waitFor(/metrics-port=(\d+)/, 5_000, true))[1]);
    const { name, socket } = await greeting(portOf.mail!);
    expect(name).toBe('mail');
    socket.destroy();
    await sleep(100);
    const text = await (await request(`http://127.0.0.1:${metricsPort}/metrics`)).body.text();
    const sample = (series: string): number => Number(text.split('\n').find((line) => line.startsWith(`${series} `))?.split(' ')[1]);
    expect(sample('pool_relay_agent_connected{pool="relay",agent="east"}')).toBe(1);
    expect(sample('pool_relay_agent_connected{pool="relay",agent="west"}')).toBe(1);
    expect(sample('pool_relay_tunnels_total{pool="relay",service="web",agent="east",outcome="accepted"}')).toBeGreaterThanOrEqual(5);
    expect(sample('pool_relay_tunnels_total{pool="relay",service="mail",agent="west",outcome="accepted"}')).toBeGreaterThanOrEqual(6);
    expect(sample('pool_relay_agent_connections{pool="relay",agent="west",state="idle"}')).toBeGreaterThanOrEqual(0);
    expect(text).toMatch(/^process_open_fds \d+/m);
  });

  it('the PROXY protocol (v1 over IPv6, v2 over IPv4) carries the user\'s address and port, as an independent parser reads it', async () => {
    const v1 = await greeting(portOf.pv1!, '::1');
    expect(v1.name).toBe('pv1');
    expect(proxied.pv1!.at(-1)).toEqual({ address: '::1', port: v1.socket.localPort });
    const v2 = await greeting(portOf.pv2!);
    expect(v2.name).toBe('pv2');
    expect(proxied.pv2!.at(-1)).toEqual({ address: '127.0.0.1', port: v2.socket.localPort });
    // The header comes before any byte of the user's: the echo is intact.
    const echoed = once(v2.socket, 'data');
    v2.socket.write('after the header');
    expect(String((await echoed)[0])).toBe('after the header');
    v1.socket.destroy();
    v2.socket.destroy();
  });

  it('pool injection: a holder of an agent\'s token who is not its live agent never gets a pooled connection, in 200 attempts', async () => {
    const statuses = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        upgradeStatus('/', { 'x-pool-token': i % 2 ? EAST_TOKEN : WEST_TOKEN, ...(i % 4 < 2 && { 'x-pool-session': 'guessed-session-secret-0123456789ab' }) }),
      ),
    );
    expect(new Set(statuses)).toEqual(new Set([401]));
    // Users are still served by the real agents.
    const { name, socket } = await greeting(portOf.web!);
    expect(name).toBe('web');
    socket.destroy();
  });

  it('takeover: one agent\'s token cannot take another agent\'s control channel, in 200 attempts', async () => {
    const before = relay.latestStatus()!;
    const refusals = await Promise.all(
      Array.from({ length: 200 }, () =>
        upgradeStatus('/control', { 'x-pool-token': WEST_TOKEN, 'x-pool-agent-name': 'east', 'x-pool-agent-id': '00000000-0000-4000-8000-000000000000', 'x-pool-control-features': 'session' }),
      ),
    );
    expect(new Set(refusals)).toEqual(new Set([401]));
    await sleep(200);
    expect(relay.latestStatus()!.replaced).toBe(before.replaced);
    const { name, socket } = await greeting(portOf.db!);
    expect(name).toBe('db');
    socket.destroy();
  }, 30_000);

  it('an unknown service, another agent\'s service and a wrong token are refused with clear messages on both sides', async () => {
    const confused = startAgent('west', WEST_TOKEN, { web: targetOf.web!, nosuch: targetOf.web! }, ['--log-level', 'info']);
    // Same token, so the same agent: while west is connected and answers, this one is refused and waits.
    await confused.waitFor(/"level":"warn".*standby: another process is connected to the relay as this agent/, 10_000, true);
    await relay.waitForStatus((s) => Number(s.conflicts) >= 1, 5_000);
    // West drains (SIGTERM) and gives its session up: the waiting process is the agent now, and is told what is wrong.
    await west.stop('SIGTERM');
    await confused.waitFor(/relay: service web belongs to agent east, not to west/, 10_000, true);
    await confused.waitFor(/relay: unknown service nosuch/, 10_000, true);
    await relay.waitFor(/unknown service nosuch/, 10_000, true);
    expect(relay.latestStatus()!.replaced).toBe('0');
    await confused.stop('SIGKILL');
    west = startAgent('west', WEST_TOKEN, { ssh: targetOf.ssh!, mail: targetOf.mail!, pv1: targetOf.pv1!, pv2: targetOf.pv2! });
    const wrong = startAgent('east', 'not-the-token-0123456789abcdef', { web: targetOf.web! });
    await wrong.waitFor(/"level":"error".*control channel failed: the relay rejected the token \(HTTP 401\): wrong or missing token/, 10_000, true);
    await relay.waitFor(/"level":"warn".*control channel refused: wrong or missing token/, 10_000, true);
    await wrong.stop('SIGKILL');
    // A real token under the wrong name: the agent is told whose it is not.
    const misnamed = startAgent('east', WEST_TOKEN, { web: targetOf.web! });
    await misnamed.waitFor(/"level":"error".*control channel failed: the relay rejected the token \(HTTP 401\): this token is not the token of agent east/, 10_000, true);
    await misnamed.stop('SIGKILL');
    await relay.waitForStatus((s) => s['agents-up']!.includes('west'), 10_000);
  }, 30_000);

  it('killing one agent leaves the other\'s users unaffected', async () => {
    await relay.waitForStatus((s) => s['agents-up'] === 'east,west' || s['agents-up'] === 'west,east', 10_000);
    const open = await greeting(portOf.ssh!);
    await east.stop('SIGKILL');
    await relay.waitForStatus((s) => s['agents-up'] === 'west', 10_000);
    // West's open tunnel and new users go on.
    const echoed = once(open.socket, 'data');
    open.socket.write('still here');
    expect(String((await echoed)[0])).toBe('still here');
    for (let i = 0; i < 5; i++) {
      const { name, socket } = await greeting(portOf.mail!);
      expect(name).toBe('mail');
      socket.destroy();
    }
    // East's users are refused at once, not left hanging.
    const refused = connect(portOf.web!, '127.0.0.1');
    refused.on('error', () => {});
    await once(refused, 'close');
    open.socket.destroy();
    east = startAgent('east', EAST_TOKEN, { web: targetOf.web!, db: targetOf.db! });
    await relay.waitForStatus((s) => s['agents-up'] === 'east,west' || s['agents-up'] === 'west,east', 10_000);
  }, 30_000);

  it('SIGHUP reload adds and removes a service while 50 tunnels on other services stay open and lose nothing', async () => {
    const tunnels = await Promise.all(Array.from({ length: 50 }, (_, i) => greeting(portOf[i % 2 ? 'web' : 'ssh']!)));
    const extraTarget = await targets.listen(namedService('extra'));
    const [extraPort] = await freePorts(1);
    // db goes, extra comes (served by east, which does not declare it: its users are refused until it does).
    writeFileSync(
      configFile,
      config(`  - { name: web, agent: east, public: "127.0.0.1:${portOf.web}" }
  - { name: ssh, agent: west, public: "127.0.0.1:${portOf.ssh}" }
  - { name: mail, agent: west, public: "127.0.0.1:${portOf.mail}" }
  - { name: extra, agent: west, public: "127.0.0.1:${extraPort}" }
`, ROTATED_EAST_TOKEN),
    );
    relay.child.kill('SIGHUP');
    await relay.waitFor(/reloaded services=.*extra:/, 10_000);
    const dbRefused = connect(portOf.db!, '127.0.0.1');
    expect(((await once(dbRefused, 'error')) as [NodeJS.ErrnoException])[0].code).toBe('ECONNREFUSED');
    // Every open tunnel still carries its bytes, both ways.
    const payload = Buffer.alloc(64 * 1024, 7);
    await Promise.all(
      tunnels.map(async ({ socket }) => {
        let received = 0;
        const done = new Promise<void>((resolve) => socket.on('data', (data: Buffer) => {
          received += data.length;
          if (received >= payload.length) resolve();
        }));
        socket.write(payload);
        await done;
        expect(received).toBe(payload.length);
      }),
    );
    for (const { socket } of tunnels) socket.destroy();
    // East's token was rotated: new connections need the new one; the open control channel went on.
    const asEast = (token: string): Record<string, string> => ({ 'x-pool-token': token, 'x-pool-agent-id': '11111111-1111-4111-8111-111111111111', 'x-pool-control-features': 'session' });
    expect(await upgradeStatus('/control', asEast(EAST_TOKEN))).toBe(401);
    // The new token is accepted; east itself is still connected and answers, so a newcomer with it waits (409).
    expect(await upgradeStatus('/control', asEast(ROTATED_EAST_TOKEN))).toBe(409);
    // The new service works once its agent serves it: west is restarted with it (the old process drains and leaves).
    await west.stop('SIGTERM');
    const westAgain = startAgent('west', WEST_TOKEN, { ssh: targetOf.ssh!, mail: targetOf.mail!, extra: extraTarget });
    await westAgain.waitFor(/control connected/, 10_000);
    let served = '';
    for (let i = 0; i < 50 && served !== 'extra'; i++) {
      served = await greeting(extraPort!).then(({ name, socket }) => {
        socket.destroy();
        return name;
      }, () => '');
      if (served !== 'extra') await sleep(100);
    }
    expect(served).toBe('extra');
  }, 60_000);
});
