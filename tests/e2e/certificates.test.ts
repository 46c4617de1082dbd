import { afterAll, describe, expect, it } from '@jest/globals';
import { X509Certificate } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AGENT_BIN, CliProcess, RELAY_BIN } from '../helpers/processes.js';
import { TargetServers, echoServer, echoThrough, sha256 } from '../helpers/tunnel.js';

// The two-host walkthrough of docs/operating.md, on loopback: the relay keeps
// a certificate it made for a name that is not localhost (127.0.0.2 and a
// host name), and an agent on "another host" pins it by the fingerprint the
// relay printed (--tls-fingerprint) or with a copy of it (--tls-ca).

const processes: CliProcess[] = [];
const targets = new TargetServers();
const dir = mkdtempSync(join(tmpdir(), 'pool-cert-'));
const agentHost = mkdtempSync(join(tmpdir(), 'pool-agent-host-'));

afterAll(async () => {
  await Promise.all(processes.splice(0).map((p) => p.stop('SIGKILL')));
  targets.closeAll();
});

async function relayOn127002(): Promise<{ relay: CliProcess; port: number; publicPort: number; fingerprint: string }> {
  const relay = new CliProcess(RELAY_BIN, [
    '--host', '127.0.0.2', '--public-host', '127.0.0.1', '--port', '0', '--public-port', '0', '--status-interval', '0',
    '--tls-dir', dir, '--tls-name', 'relay.pool.test,127.0.0.2', '--token', 'walkthrough-secret-0123456789',
  ]);
  processes.push(relay);
  const [, fingerprint] = await relay.waitFor(/agents pin it with --tls-fingerprint ([0-9A-F:]{95})/, 10_000, true);
  const ready = await relay.waitFor(/ready port=(\d+) public-port=(\d+)/, 10_000, true);
  return { relay, port: Number(ready[1]), publicPort: Number(ready[2]), fingerprint: fingerprint! };
}

describe('a kept certificate for a name other than localhost, pinned by the agent', () => {
  it('is made once with the names asked for, its key private, its true SHA-256 fingerprint printed; an agent pinning it connects verified', async () => {
    const first = await relayOn127002();
    const cert = readFileSync(join(dir, 'relay.crt'), 'utf8');
    const x509 = new X509Certificate(cert);
    expect(first.fingerprint).toBe(x509.fingerprint256);
    expect(x509.subjectAltName).toMatch(/DNS:relay\.pool\.test/);
    expect(x509.subjectAltName).toMatch(/IP Address:127\.0\.0\.2/);
    expect(statSync(join(dir, 'relay.key')).mode & 0o777).toBe(0o600);

    // The agent's host has a copy of the certificate, not the key.
    copyFileSync(join(dir, 'relay.crt'), join(agentHost, 'relay.crt'));
    const target = await targets.listen(echoServer());
    const agent = new CliProcess(AGENT_BIN, [
      '--server', `127.0.0.2:${first.port}`, '--tls-ca', join(agentHost, 'relay.crt'), '--token', 'walkthrough-secret-0123456789',
      '--target', target, '--status-interval', '0',
    ]);
    processes.push(agent);
    await agent.waitFor(/control connected/, 10_000, true);
    const payload = Buffer.from('through a verified, pinned relay');
    expect(await echoThrough(first.publicPort, payload)).toBe(sha256(payload));

    // Restarted, the relay keeps the same certificate: the pin still holds.
    await first.relay.stop('SIGKILL');
    await agent.stop('SIGKILL');
    const second = await relayOn127002();
    expect(second.fingerprint).toBe(first.fingerprint);
    expect(second.relay.lines.join('\n')).toMatch(/using the self-signed certificate kept in/);
  }, 30_000);

  it('an agent pinning the printed fingerprint connects, its pooled connections too, and tunnels', async () => {
    const { port, publicPort, fingerprint } = await relayOn127002();
    const target = await targets.listen(echoServer());
    const agent = new CliProcess(AGENT_BIN, [
      '--server', `127.0.0.2:${port}`, '--tls-fingerprint', fingerprint, '--token', 'walkthrough-secret-0123456789',
      '--target', target, '--status-interval', '0', '--min-cap', '4',
    ]);
    processes.push(agent);
    await agent.waitFor(/control connected/, 10_000, true);
    const payloads = Array.from({ length: 8 }, (_, i) => Buffer.from(`pinned by fingerprint, tunnel ${i}`));
    const hashes = await Promise.all(payloads.map((payload) => echoThrough(publicPort, payload)));
    expect(hashes).toEqual(payloads.map(sha256));
    await agent.stop('SIGKILL');
  }, 30_000);

  it('an agent pinning another fingerprint sends nothing, says which certificate it met, and says so once', async () => {
    const { relay, port } = await relayOn127002();
    const agent = new CliProcess(AGENT_BIN, ['--server', `127.0.0.2:${port}`, '--tls-fingerprint', 'ab'.repeat(32), '--token', 'walkthrough-secret-0123456789', '--target', '127.0.0.1:9', '--status-interval', '0']);
    processes.push(agent);
    await agent.waitFor(/"level":"error".*control channel failed: the relay's certificate has SHA-256 fingerprint [0-9A-F:]{95}, not the pinned AB:AB/, 10_000, true);
    await new Promise((resolve) => setTimeout(resolve, 2_500));
    expect(agent.lines.filter((line) => /"level":"error".*control channel failed/.test(line))).toHaveLength(1);
    expect(agent.lines.join('\n')).not.toMatch(/control connected/);
    // The relay saw TLS handshakes and nothing after them: no upgrade, so no token to refuse.
    expect(relay.lines.join('\n')).not.toMatch(/refused|401/);
    await agent.stop('SIGKILL');
  }, 30_000);

  it('an agent left at --tls verified against a self-signed relay is told how to pin it', async () => {
    const { port } = await relayOn127002();
    const agent = new CliProcess(AGENT_BIN, ['--server', `127.0.0.2:${port}`, '--target', '127.0.0.1:9', '--status-interval', '0']);
    processes.push(agent);
    await agent.waitFor(/"level":"error".*control channel failed: self-signed certificate.*pin the fingerprint pool-relay printed at start with --tls-fingerprint/, 10_000, true);
    await agent.stop('SIGKILL');
  }, 30_000);

  it('an agent that pins another certificate is refused by TLS, and says so once', async () => {
    const other = mkdtempSync(join(tmpdir(), 'pool-cert-other-'));
    const otherRelay = new CliProcess(RELAY_BIN, ['--host', '127.0.0.1', '--public-host', '127.0.0.1', '--port', '0', '--public-port', '0', '--status-interval', '0', '--tls-dir', other]);
    processes.push(otherRelay);
    await otherRelay.waitFor(/ready port=/, 10_000, true);
    const { port } = await relayOn127002();
    const agent = new CliProcess(AGENT_BIN, ['--server', `127.0.0.2:${port}`, '--tls-ca', join(other, 'relay.crt'), '--target', '127.0.0.1:9', '--status-interval', '0']);
    processes.push(agent);
    await agent.waitFor(/"level":"error".*control channel failed/, 10_000, true);
    await new Promise((resolve) => setTimeout(resolve, 2_500));
    expect(agent.lines.filter((line) => /"level":"error".*control channel failed/.test(line))).toHaveLength(1);
    expect(agent.lines.join('\n')).not.toMatch(/control connected/);
  }, 30_000);
});
