import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { once } from 'node:events';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { generateDevCertificate } from '@pool/shared/internal';
import { freePorts } from '../helpers/ports.js';
import { AGENT_BIN, CliProcess, RELAY_BIN } from '../helpers/processes.js';
import { TargetServers, echoServer, echoThrough, sha256 } from '../helpers/tunnel.js';

// SIGHUP reloads as an operator meets them: all or nothing when a port cannot
// be had (and applied by a later SIGHUP once it can), a service that changes
// but keeps its port, a changed `listen` said to need a restart, and a
// renewed certificate taken without one.

const TOKEN = 'reload-token-0123456789abcdef';
const dir = mkdtempSync(join(tmpdir(), 'pool-reload-'));
const configFile = join(dir, 'relay.yaml');
const processes: CliProcess[] = [];
const targets = new TargetServers();
let relay: CliProcess;
let agentsPort: number;
let firstFingerprint: string;

afterAll(async () => {
  await Promise.all(processes.splice(0).map((p) => p.stop('SIGKILL')));
  targets.closeAll();
});

/** The configuration with these services; the agents' port stays as the relay took it unless `listen` says otherwise. */
function writeConfig(services: string, listen = `127.0.0.1:${agentsPort ?? 0}`): void {
  writeFileSync(
    configFile,
    `listen: ${listen}
tls: { cert: relay.crt, key: relay.key }
agents:
  edge: { token: "${TOKEN}" }
services:
${services}`,
  );
}

async function writeCertificate(): Promise<string> {
  const certificate = await generateDevCertificate();
  writeFileSync(join(dir, 'relay.crt'), certificate.cert);
  writeFileSync(join(dir, 'relay.key'), certificate.key, { mode: 0o600 });
  return certificate.fingerprint;
}

/** Whether an echo through `port` comes back whole (false when nothing listens there). */
async function served(port: number): Promise<boolean> {
  const payload = Buffer.alloc(2_048, 0x55);
  return echoThrough(port, payload).then((digest) => digest === sha256(payload), () => false);
}

/** The SHA-256 fingerprint of the certificate the agents' port presents now. */
async function presentedFingerprint(): Promise<string> {
  const socket = tlsConnect({ host: '127.0.0.1', port: agentsPort, rejectUnauthorized: false });
  socket.on('error', () => {});
  await once(socket, 'secureConnect');
  const fingerprint = socket.getPeerCertificate().fingerprint256;
  socket.destroy();
  return fingerprint;
}

const sighup = async (expected: RegExp): Promise<RegExpMatchArray> => {
  const seen = relay.waitFor(expected, 10_000);
  relay.child.kill('SIGHUP');
  return seen;
};

let webPort: number;
let target: string;

beforeAll(async () => {
  firstFingerprint = await writeCertificate();
  target = await targets.listen(echoServer());
  [webPort] = await freePorts(1) as [number];
  writeConfig(`  - { name: web, agent: edge, public: "127.0.0.1:${webPort}" }\n`);
  relay = new CliProcess(RELAY_BIN, ['--config', configFile, '--status-interval', '0']);
  processes.push(relay);
  agentsPort = Number((await relay.waitFor(/ready port=(\d+)/, 10_000, true))[1]);
  const agent = new CliProcess(AGENT_BIN, ['--server', `127.0.0.1:${agentsPort}`, '--tls', 'insecure', '--name', 'edge', '--token', TOKEN, '--status-interval', '0', '--service', `web=${target}`]);
  processes.push(agent);
  await agent.waitFor(/control connected/, 10_000, true);
}, 30_000);

describe('pool-relay --config reloaded with SIGHUP', () => {
  it('a new port that is taken changes nothing (the error names it); a later SIGHUP with the same file applies it once free', async () => {
    const [movedPort, takenPort] = (await freePorts(2)) as [number, number];
    const squatter: Server = createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => squatter.listen(takenPort, '127.0.0.1', resolve));
    // web moves to a free port, and a new service asks for the taken one.
    writeConfig(`  - { name: web, agent: edge, public: "127.0.0.1:${movedPort}" }
  - { name: extra, agent: edge, public: "127.0.0.1:${takenPort}" }
`);
    const refused = await sighup(/configuration not reloaded.*/);
    expect(refused[0]).toContain(`127.0.0.1:${takenPort}`);
    expect(refused[0]).toContain('EADDRINUSE');
    // Nothing changed: web still where it was, and not yet where it goes.
    for (let i = 0; i < 5; i++) expect(await served(webPort)).toBe(true);
    expect(await served(movedPort)).toBe(false);

    await new Promise((resolve) => squatter.close(resolve));
    const applied = await sighup(/reloaded services=(\S+)/);
    expect(applied[1]!.split(',').sort()).toEqual([`extra:${takenPort}`, `web:${movedPort}`]);
    expect(await served(movedPort)).toBe(true);
    expect(await served(webPort)).toBe(false);
    webPort = movedPort;
  }, 30_000);

  it('a service that changes but keeps its port is served with its new settings', async () => {
    writeConfig(`  - { name: web, agent: edge, public: "127.0.0.1:${webPort}", proxyProtocol: v1 }\n`);
    await sighup(/reloaded services=/);
    // The echo target sends back the PROXY header the agent now writes first.
    const socket = connect(webPort, '127.0.0.1');
    socket.on('error', () => {});
    socket.write('hello');
    let text = '';
    for await (const chunk of socket) {
      text += String(chunk);
      if (text.endsWith('hello')) break;
    }
    socket.destroy();
    expect(text).toMatch(/^PROXY TCP4 127\.0\.0\.1 127\.0\.0\.1 \d+ \d+\r\nhello$/);
  }, 30_000);

  it('a changed listen is applied at the next restart, and says so; the rest is applied now', async () => {
    const [otherPort] = (await freePorts(1)) as [number];
    writeConfig(`  - { name: web, agent: edge, public: "127.0.0.1:${webPort}" }\n`, `127.0.0.1:${otherPort}`);
    const warned = relay.waitFor(/listen changed in .*next restart/, 10_000);
    await sighup(/reloaded services=/);
    await warned;
    expect(await served(webPort)).toBe(true);
    writeConfig(`  - { name: web, agent: edge, public: "127.0.0.1:${webPort}" }\n`);
    await sighup(/reloaded services=/);
  }, 30_000);

  it('a renewed certificate at the same paths is presented to new connections, without a restart; tunnels go on', async () => {
    expect((await presentedFingerprint()).toUpperCase()).toBe(firstFingerprint.toUpperCase());
    const renewed = await writeCertificate();
    await sighup(/reloaded services=/);
    expect((await presentedFingerprint()).toUpperCase()).toBe(renewed.toUpperCase());
    expect(await served(webPort)).toBe(true);
  }, 30_000);

  it('a key that does not match its certificate changes nothing', async () => {
    const before = await presentedFingerprint();
    writeFileSync(join(dir, 'relay.key'), (await generateDevCertificate()).key, { mode: 0o600 });
    const refused = await sighup(/configuration not reloaded.*/);
    expect(refused[0]).toMatch(/key values mismatch|KEY_VALUES_MISMATCH/i);
    expect(await presentedFingerprint()).toBe(before);
    expect(await served(webPort)).toBe(true);
  }, 30_000);
});
