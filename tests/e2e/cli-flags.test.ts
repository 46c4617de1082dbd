import { beforeAll, describe, expect, it } from '@jest/globals';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { AGENT_BIN, CliProcess, RELAY_BIN, withDefaults } from '../helpers/processes.js';
import { selfSignedCert } from '../helpers/tls-cert.js';

// Bad flags and env vars: each CLI refuses them before it listens or dials,
// with exit code 2 and one line that names the flag (or env var) as written.

const pems = mkdtempSync(join(tmpdir(), 'pool-flags-'));
const CERT = join(pems, 'relay.crt');
const KEY = join(pems, 'relay.key');
const CONFIG = join(pems, 'relay.yaml');
beforeAll(async () => {
  const { cert, key } = await selfSignedCert();
  writeFileSync(CERT, cert);
  writeFileSync(KEY, key);
  writeFileSync(CONFIG, 'listen: 127.0.0.1:0\nagents:\n  edge: { token: "flags-token-0123456789" }\nservices:\n  - { name: web, agent: edge, public: "127.0.0.1:65000" }\n');
});

const relayBase = ['--host', '127.0.0.1', '--public-host', '127.0.0.1', '--port', '0', '--public-port', '0'];
const agentBase = ['--server', '127.0.0.1:1', '--target', '127.0.0.1:2'];

const cases: Array<[string, string, string[], Record<string, string>, RegExp]> = [
  ['relay', 'an empty --allow', ['--allow', ''], {}, /--allow "": an empty allowlist/],
  ['relay', 'a blank --allow', ['--allow', ' , '], {}, /--allow " , ": an empty allowlist/],
  ['relay', 'a malformed --allow entry', ['--allow', '10.0.0.0/99'], {}, /invalid allow entry "10\.0\.0\.0\/99"/],
  ['relay', '--status-interval past a timer', ['--status-interval', '1e12'], {}, /invalid --status-interval "1e12": expected a whole number from 0 to 2147483647/],
  ['relay', 'a negative --status-interval', ['--status-interval', '-1'], {}, /--status-interval/],
  ['relay', 'a word for --status-interval', ['--status-interval', 'abc'], {}, /invalid --status-interval "abc"/],
  ['relay', 'a negative --drain-timeout', ['--drain-timeout=-1'], {}, /invalid --drain-timeout "-1"/],
  ['relay', 'a huge --drain-timeout', ['--drain-timeout', '1000000000000'], {}, /invalid --drain-timeout "1000000000000"/],
  ['relay', 'a port out of range', ['--port=70000'], {}, /invalid --port "70000": expected a whole number from 0 to 65535/],
  ['relay', 'a negative port without =', ['--port', '-1'], {}, /--port/],
  ['relay', 'a bad number from the environment', [], { POOL_MAX_CAP: 'x' }, /invalid POOL_MAX_CAP "x"/],
  ['relay', 'a boolean env var that is no boolean', [], { POOL_PLAIN: 'maybe' }, /invalid POOL_PLAIN "maybe": expected one of 1, true, yes, on, 0, false, no, off/],
  ['relay', '--plain with a certificate', ['--plain', '--tls-cert', 'x.crt', '--tls-key', 'x.key'], {}, /--plain and --tls-cert\/--tls-key exclude each other/],
  ['relay', 'a UDP datagram maximum over what UDP carries', ['--udp', '--udp-max-datagram', '65508'], {}, /invalid --udp-max-datagram "65508": expected a whole number from 1 to 65507/],
  ['relay', 'a zero UDP idle timeout', ['--udp', '--udp-idle-timeout', '0'], {}, /invalid --udp-idle-timeout "0": expected a whole number from 1/],
  ['relay', '--udp with --config', ['--udp', '--config', '/dev/null'], {}, /--udp: with --config, each service says its protocol in \/dev\/null/],
  ['relay', 'an unknown log level', ['--log-level', 'loud'], {}, /invalid --log-level "loud"/],
  ['relay', 'a missing config file', ['--config', '/nonexistent/relay.yaml'], {}, /ENOENT|no such file/],
  ['relay', 'an unknown flag', ['--prot', '1'], {}, /Unknown option '--prot'/],
  ['relay', 'a certificate and key swapped', ['--tls-cert', KEY, '--tls-key', CERT], {}, /--tls-cert \S+relay\.key: it holds a private key \(are cert and key swapped\?\)/],
  ['relay', 'a --tls-key that is no PEM', ['--tls-cert', CERT, '--tls-key', '/dev/null'], {}, /--tls-key \/dev\/null: not a PEM private key/],
  ['relay', 'a token shorter than the file allows', ['--token', 'short'], {}, /--token: a token is at least 16 characters/],
  ['relay', 'a UDP setting without --udp', ['--udp-idle-timeout', '1000'], {}, /--udp-idle-timeout only applies with --udp/],
  ['relay', 'a UDP setting from the environment without --udp', [], { POOL_UDP_MAX_FLOWS: '10' }, /--udp-max-flows only applies with --udp/],
  ['relay', 'a flag given twice', ['--port', '1', '--port', '2'], {}, /--port is given more than once/],
  ['relay', 'a flag that the config file also sets', ['--config', CONFIG, '--port', '10101'], {}, /--port \(\S+relay\.yaml sets listen\).*: set each in one place/],
  ['relay', 'a public port beside the services of a config file', ['--config', CONFIG, '--public-port', '8080', '--port', '0'], {}, /--public-port \(\S+relay\.yaml sets services\[\]\.public\)/],
  ['relay', '--tls-dir with a certificate of its own', ['--tls-cert', CERT, '--tls-key', KEY, '--tls-dir', pems], {}, /--tls-dir is for a certificate the relay makes; with --tls-cert it would be ignored/],
  ['relay', 'a malformed --agent-fingerprint', ['--agent-fingerprint', 'AB:CD'], {}, /--agent-fingerprint "AB:CD": expected the SHA-256 fingerprint pool-agent printed/],
  ['relay', 'an unknown --transport', ['--transport', 'quic'], {}, /--transport "quic": expected auto, tls or wss/],
  ['relay', '--transport tls with --plain', ['--transport', 'tls', '--plain'], {}, /--transport tls needs TLS, and --plain has none/],
  ['agent', 'an unknown --transport', ['--transport', 'h2'], {}, /--transport "h2": expected auto, tls or wss/],
  ['agent', '--transport tls to a ws:// relay', ['--transport', 'tls', '--server', 'ws://127.0.0.1:1'], {}, /--transport tls needs TLS, and the relay is reached over plain ws:\/\//],
  ['relay', '--agent-fingerprint with --plain', ['--agent-fingerprint', 'ab'.repeat(32), '--plain'], {}, /--agent-fingerprint needs TLS/],
  ['agent', 'a --tls-ca that is no certificate', ['--tls-ca', '/dev/null'], {}, /--tls-ca \/dev\/null: not a PEM certificate/],
  ['agent', 'a missing --tls-ca file', ['--tls-ca', '/nonexistent.crt'], {}, /--tls-ca \/nonexistent\.crt: ENOENT/],
  ['agent', 'a --tls-fingerprint that is no SHA-256 fingerprint', ['--tls-fingerprint', 'AB:CD'], {}, /--tls-fingerprint "AB:CD": expected the SHA-256 fingerprint pool-relay prints/],
  ['agent', '--tls-fingerprint with --tls-ca', ['--tls-fingerprint', 'ab'.repeat(32), '--tls-ca', '/dev/null'], {}, /--tls-ca and --tls-fingerprint exclude each other/],
  ['agent', '--tls-fingerprint with --tls insecure', ['--tls-fingerprint', 'ab'.repeat(32), '--tls', 'insecure'], {}, /--tls-fingerprint and --tls insecure exclude each other/],
  ['agent', 'a target with a space', ['--target', 'a b:80'], {}, /invalid service default "a b:80"/],
  ['agent', 'a --service without a target', ['--service', 'web'], {}, /--service "web": expected name=host:port/],
  ['agent', 'a min-cap of 0', ['--min-cap', '0'], {}, /invalid --min-cap "0": expected a whole number from 1/],
  ['agent', 'an unknown tls mode', ['--tls', 'maybe'], {}, /invalid tls "maybe"/],
  ['agent', '--key-dir with a ws:// relay', ['--server', 'ws://127.0.0.1:1', '--key-dir', '/tmp'], {}, /--key-dir needs TLS/],
  ['agent', 'the same relay twice', ['--server', '127.0.0.1:1', '--server', '127.0.0.1:1'], {}, /--server 127\.0\.0\.1:1 127\.0\.0\.1:1: a relay is given twice/],
  ['agent', 'the same relay twice, written two ways', ['--server', '127.0.0.1:1', '--server', 'wss://127.0.0.1:1/'], {}, /a relay is given twice/],
  ['agent', 'a flag given twice', ['--token', 'one-token-0123456789', '--token', 'two-token-0123456789'], {}, /--token is given more than once/],
  ['agent', 'a pinned certificate for a plain ws:// relay', ['--server', 'ws://127.0.0.1:1', '--tls-fingerprint', 'ab'.repeat(32)], {}, /--tls-fingerprint needs TLS, and --server ws:\/\/127\.0\.0\.1:1 is plain ws:\/\//],
  ['agent', 'a server on port 0', ['--server', 'relay.example.com:0'], {}, /invalid server "relay\.example\.com:0"/],
];

describe('CLI flag validation', () => {
  it.each(cases)('%s refuses %s', async (which, _label, args, env, message) => {
    const cli = new CliProcess(which === 'relay' ? RELAY_BIN : AGENT_BIN, withDefaults(which === 'relay' ? relayBase : agentBase, args), [], env);
    expect(await cli.exited).toBe(2);
    const errors = cli.lines.filter((line) => line.startsWith('stderr: '));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(message);
    expect(cli.lines.join('\n')).not.toMatch(/ ready | started /);
  });

  it('a port in use stops the relay with one line that names it, and no warning before it', async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const port = String((taken.address() as AddressInfo).port);
    try {
      for (const [flag, message] of [
        ['--port', new RegExp(`EADDRINUSE.*127\\.0\\.0\\.1:${port}`)],
        ['--public-port', new RegExp(`service default cannot listen on tcp 127\\.0\\.0\\.1:${port}: EADDRINUSE`)],
      ] as const) {
        // Neither --token nor --allow: the warning about that comes only once the relay runs.
        const cli = new CliProcess(RELAY_BIN, withDefaults(relayBase, ['--plain', flag, port]));
        expect(await cli.exited).toBe(2);
        const errors = cli.lines.filter((line) => line.startsWith('stderr: '));
        expect(errors).toHaveLength(1);
        expect(errors[0]).toMatch(message);
      }
    } finally {
      taken.close();
    }
  });

  it('a SIGHUP with nothing to reload is logged, and neither the relay nor the agent stops', async () => {
    const relay = new CliProcess(RELAY_BIN, [...relayBase, '--plain', '--status-interval', '0', '--token', 'sighup-token-0123456789']);
    const port = (await relay.waitFor(/ready port=(\d+)/, 10_000, true))[1]!;
    const agent = new CliProcess(AGENT_BIN, ['--server', `ws://127.0.0.1:${port}`, '--target', '127.0.0.1:2', '--token', 'sighup-token-0123456789', '--status-interval', '0']);
    await agent.waitFor(/control connected/, 10_000, true);
    for (const cli of [relay, agent]) {
      const logged = cli.waitFor(/SIGHUP: .*at a restart/, 10_000);
      cli.child.kill('SIGHUP');
      await logged;
    }
    expect(await agent.stop('SIGTERM')).toBe(0);
    expect(await relay.stop('SIGTERM')).toBe(0);
  });

  it('a relay whose stdout reader goes away (| head) keeps running, and stops on SIGTERM', async () => {
    const cli = new CliProcess(RELAY_BIN, [...relayBase, '--plain', '--status-interval', '20', '--token', 'epipe-token-0123456789']);
    await cli.waitFor(/ready port=/, 10_000, true);
    cli.child.stdout!.destroy();
    // Fifty status lines into a closed pipe.
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    expect(cli.child.exitCode).toBeNull();
    expect(await cli.stop('SIGTERM')).toBe(0);
  });

  it('the agent takes a ws:// server without --tls off (its default there is off)', async () => {
    const cli = new CliProcess(AGENT_BIN, ['--server', 'ws://127.0.0.1:1', '--target', '127.0.0.1:2', '--status-interval', '0']);
    await cli.waitFor(/started server=ws:\/\/127\.0\.0\.1:1/, 10_000, true);
    expect(await cli.stop('SIGTERM')).toBe(0);
  });

  it('a relay with neither --token nor --allow starts, and warns that anyone can become its agent', async () => {
    const cli = new CliProcess(RELAY_BIN, [...relayBase, '--plain', '--status-interval', '0']);
    await cli.waitFor(/ready port=/, 10_000, true);
    expect(cli.lines.join('\n')).toMatch(/"level":"warn".*neither --token nor --allow/);
    expect(await cli.stop('SIGTERM')).toBe(0);
  });

  it('pnpm\'s `--` before the flags is not an argument', async () => {
    const cli = new CliProcess(RELAY_BIN, ['--', ...relayBase, '--plain', '--status-interval', '0', '--token', 'pnpm-token-0123456789']);
    await cli.waitFor(/ready port=/, 10_000, true);
    expect(await cli.stop('SIGTERM')).toBe(0);
  });
});
