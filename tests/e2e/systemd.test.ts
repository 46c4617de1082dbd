import { afterAll, describe, expect, it } from '@jest/globals';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateDevCertificate } from '@pool/shared/internal';
import { freePorts } from '../helpers/ports.js';
import { CliProcess } from '../helpers/processes.js';
import { TargetServers, echoServer, echoThrough, sha256 } from '../helpers/tunnel.js';

// The systemd units of docs/operating.md, as a host would run them: each
// ExecStart with the files the guide names (in a scratch folder for /etc/pool,
// the credentials and the state directory), the environment systemd would
// give it, and the signals of ExecReload and KillSignal. Listen addresses
// move to loopback and free ports; nothing else changes.

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const GUIDE = readFileSync(join(ROOT, 'docs/operating.md'), 'utf8');
const SECTION = GUIDE.slice(GUIDE.indexOf('## systemd'));
const processes: CliProcess[] = [];
const targets = new TargetServers();

afterAll(async () => {
  await Promise.all(processes.splice(0).map((p) => p.stop('SIGKILL')));
  targets.closeAll();
});

/** The code blocks of the systemd section in `language`. */
function blocks(language: string): string[] {
  return [...SECTION.matchAll(new RegExp('```' + language + '\\n([\\s\\S]*?)```', 'g'))].map((match) => match[1]!);
}

/** A unit's `[Service]` settings, each key with all its values in order. */
function serviceOf(unit: string): Map<string, string[]> {
  const settings = new Map<string, string[]>();
  const service = unit.slice(unit.indexOf('[Service]'), unit.indexOf('[Install]'));
  for (const line of service.split('\n')) {
    const match = /^(\w+)=(.*)$/.exec(line);
    if (match) settings.set(match[1]!, [...(settings.get(match[1]!) ?? []), match[2]!]);
  }
  return settings;
}

/** `KEY=value` lines, as EnvironmentFile reads them. */
const envFile = (vars: Record<string, string>): string => Object.entries(vars).map(([key, value]) => `${key}=${value}`).join('\n');

const unitNamed = (name: string): string => blocks('ini').find((unit) => unit.startsWith(`# /etc/systemd/system/${name}.service`))!;

describe('the systemd units of docs/operating.md', () => {
  const scratch = mkdtempSync(join(tmpdir(), 'pool-systemd-'));
  const etc = join(scratch, 'etc-pool');
  mkdirSync(etc);
  const relayUnit = serviceOf(unitNamed('pool-relay'));
  const agentUnit = serviceOf(unitNamed('pool-agent'));
  /** ExecStart as argv, with the host's paths moved into the scratch folder. */
  const command = (unit: Map<string, string[]>, replace: Array<[string, string]>): string[] => {
    let line = unit.get('ExecStart')![0]!;
    for (const [from, to] of [['/opt/pool/', ROOT], ['/etc/pool', etc], ...replace] as Array<[string, string]>) line = line.replaceAll(from, to);
    const [node, ...args] = line.split(' ');
    expect(node).toBe('/usr/bin/node');
    return args;
  };
  let relay: CliProcess;
  let relayPort: number;
  let webPort: number;
  let fingerprint: string;

  it('pool-relay: a user systemd makes gets its key as a credential, its tokens from the environment file; it starts, reloads on ExecReload and stops on KillSignal', async () => {
    // A dynamic user reads no root-owned file: the key must come as a credential.
    expect(relayUnit.get('DynamicUser')).toEqual(['yes']);
    const certificate = await generateDevCertificate();
    fingerprint = certificate.fingerprint;
    writeFileSync(join(etc, 'relay.crt'), certificate.cert);
    writeFileSync(join(etc, 'relay.key'), certificate.key, { mode: 0o600 });
    writeFileSync(join(etc, 'relay.env'), envFile({ EAST_TOKEN: 'east-systemd-0123456789abcdef', WEST_TOKEN: 'west-systemd-0123456789abcdef' }), { mode: 0o600 });
    // systemd copies each credential into a folder of the service's own.
    const credentials = join(scratch, 'credentials');
    mkdirSync(credentials);
    for (const credential of relayUnit.get('LoadCredential')!) {
      const [name, path] = credential.split(':') as [string, string];
      copyFileSync(path.replace('/etc/pool', etc), join(credentials, name));
    }
    const [yaml] = blocks('yaml');
    expect(yaml).toMatch(/^tls: \{ cert: "\$\{CREDENTIALS_DIRECTORY\}\/relay\.crt", key: "\$\{CREDENTIALS_DIRECTORY\}\/relay\.key" \}$/m);
    const ports = await freePorts(3);
    webPort = ports[0]!;
    let next = 0;
    writeFileSync(join(etc, 'relay.yaml'), yaml!.replace('0.0.0.0:10101', '127.0.0.1:0').replace(/0\.0\.0\.0:\d+/g, () => `127.0.0.1:${ports[next++]}`));
    const environment = Object.fromEntries(readFileSync(relayUnit.get('EnvironmentFile')![0]!.replace('/etc/pool', etc), 'utf8').split('\n').map((line) => line.split(/=(.*)/s, 2) as [string, string]));
    relay = new CliProcess(command(relayUnit, [])[0]!, command(relayUnit, []).slice(1), [], { ...environment, CREDENTIALS_DIRECTORY: credentials });
    processes.push(relay);
    relayPort = Number((await relay.waitFor(/ready port=(\d+)/, 10_000, true))[1]);
    expect(relay.lines.join('\n')).toContain(`SHA-256 fingerprint ${fingerprint}`);
    expect(relayUnit.get('ExecReload')).toEqual(['/bin/kill -HUP $MAINPID']);
    relay.child.kill('SIGHUP');
    await relay.waitFor(/reloaded services=/, 10_000);
  }, 30_000);

  it('pool-agent: keeps its key in its state directory, takes its token and the pin from the environment file, and serves', async () => {
    expect(agentUnit.get('DynamicUser')).toEqual(['yes']);
    const stateDirectory = join(scratch, 'state');
    mkdirSync(stateDirectory);
    const target = await targets.listen(echoServer());
    const args = command(agentUnit, [
      [`/var/lib/${agentUnit.get('StateDirectory')![0]}`, stateDirectory],
      ['relay.example.com:10101', `127.0.0.1:${relayPort}`],
      ['127.0.0.1:8080', target],
    ]);
    // The key goes where the unit lets the agent write.
    expect(args).toContain(stateDirectory);
    writeFileSync(join(etc, 'agent.env'), envFile({ POOL_TOKEN: 'east-systemd-0123456789abcdef', POOL_TLS_FINGERPRINT: fingerprint }), { mode: 0o600 });
    expect(agentUnit.get('EnvironmentFile')).toEqual(['/etc/pool/agent.env']);
    const environment = Object.fromEntries(readFileSync(join(etc, 'agent.env'), 'utf8').split('\n').map((line) => line.split(/=(.*)/s, 2) as [string, string]));
    const agent = new CliProcess(args[0]!, args.slice(1), [], environment);
    processes.push(agent);
    await agent.waitFor(/key made and kept in .*agent\.crt/, 10_000, true);
    await agent.waitFor(/control connected/, 10_000, true);
    const payload = Buffer.alloc(10_000, 0x33);
    expect(await echoThrough(webPort, payload)).toBe(sha256(payload));
    expect(agentUnit.get('KillSignal')).toEqual(['SIGTERM']);
    expect(await agent.stop('SIGTERM')).toBe(0);
    expect(await relay.stop('SIGTERM')).toBe(0);
  }, 30_000);
});
