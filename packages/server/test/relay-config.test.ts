import { describe, expect, it } from '@jest/globals';
import { parseRelayConfig } from '@pool/server';

const EAST = 'east-secret-0123456789abcdef';

describe('parseRelayConfig', () => {
  it('reads agents and services from YAML, with secrets from the environment', () => {
    const config = parseRelayConfig(
      `listen: 0.0.0.0:10101
tls: { cert: relay.crt, key: relay.key }
agents:
  east: { token: "\${EAST_TOKEN}", allow: [198.51.100.0/24] }
  west: { token: "west-secret-0123456789abcdef" }
services:
  - { name: web, agent: east, public: 0.0.0.0:18080 }
  - { name: db,  agent: east, public: 127.0.0.1:15432 }
  - { name: ssh, agent: west, public: "[::1]:10022", proxyProtocol: v2 }
`,
      '/etc/pool/relay.yaml',
      { EAST_TOKEN: EAST },
    );
    expect(config.listen).toEqual({ host: '0.0.0.0', port: 10101 });
    // Wherever the relay is started from: paths are the file's.
    expect(config.tls).toEqual({ cert: '/etc/pool/relay.crt', key: '/etc/pool/relay.key' });
    expect(config.agents.east).toEqual({ token: EAST, allow: ['198.51.100.0/24'] });
    expect(config.services).toEqual([
      { name: 'web', agent: 'east', publicHost: '0.0.0.0', publicPort: 18080 },
      { name: 'db', agent: 'east', publicHost: '127.0.0.1', publicPort: 15432 },
      { name: 'ssh', agent: 'west', publicHost: '::1', publicPort: 10022, proxyProtocol: 'v2' },
    ]);
  });

  it('reads the same shape from JSON', () => {
    const config = parseRelayConfig(JSON.stringify({ agents: { a: { token: EAST } }, services: [{ name: 's', agent: 'a', public: ':9000' }] }), 'relay.json', {});
    expect(config.services).toEqual([{ name: 's', agent: 'a', publicHost: undefined, publicPort: 9000 }]);
  });

  it('reads a UDP service and its flow settings, on a port number a TCP service also uses', () => {
    const config = parseRelayConfig(
      JSON.stringify({
        agents: { a: { token: EAST } },
        services: [
          { name: 'dns-tcp', agent: 'a', public: ':53' },
          { name: 'dns', agent: 'a', public: ':53', protocol: 'udp', idleTimeout: 30_000, maxFlows: 100, maxDatagram: 1_232 },
        ],
      }),
      'relay.json',
      {},
    );
    expect(config.services[1]).toEqual({ name: 'dns', agent: 'a', publicHost: undefined, publicPort: 53, protocol: 'udp', udp: { idleTimeout: 30_000, maxFlows: 100, maxDatagram: 1_232 } });
  });

  it("pins an agent's key by its fingerprint, or two while the key is rotated", () => {
    const pin = 'ab'.repeat(32);
    const next = `sha256:${'CD:'.repeat(31)}CD`;
    const config = parseRelayConfig(
      JSON.stringify({ agents: { east: { token: EAST, fingerprint: pin }, west: { token: `w${EAST}`, fingerprint: [pin, next] } }, services: [{ name: 's', agent: 'east', public: ':9000' }] }),
      'relay.json',
      {},
    );
    expect(config.agents.east!.fingerprint).toBe(`${'AB:'.repeat(31)}AB`);
    expect(config.agents.west!.fingerprint).toEqual([`${'AB:'.repeat(31)}AB`, `${'CD:'.repeat(31)}CD`]);
  });

  const valid = { agents: { east: { token: EAST } }, services: [{ name: 'web', agent: 'east', public: ':8080' }] };
  it.each([
    ['not YAML', '{ agents: [', '(document)'],
    ['an unknown key', JSON.stringify({ ...valid, extra: 1 }), 'extra: unknown key'],
    ['no agents', JSON.stringify({ ...valid, agents: {} }), 'agents: at least one agent'],
    ['a short token', JSON.stringify({ ...valid, agents: { east: { token: 'short' } } }), 'agents.east.token: a token is at least 16'],
    ['a shared token', JSON.stringify({ ...valid, agents: { east: { token: EAST }, west: { token: EAST } } }), 'agents.west.token: the same as agents.east.token'],
    ['an unset variable', JSON.stringify({ ...valid, agents: { east: { token: '${NOPE}' } } }), 'agents.east.token: environment variable NOPE is not set'],
    ['an empty allowlist', JSON.stringify({ ...valid, agents: { east: { token: EAST, allow: [] } } }), 'agents.east.allow: an empty allowlist'],
    ['a bad range', JSON.stringify({ ...valid, agents: { east: { token: EAST, allow: ['10.0.0.0/99'] } } }), 'agents.east.allow:'],
    ['a service of nobody', JSON.stringify({ ...valid, services: [{ name: 'web', agent: 'west', public: ':8080' }] }), 'services[0].agent: expected one of the agents (east)'],
    ['a service twice', JSON.stringify({ ...valid, services: [valid.services[0], valid.services[0]] }), 'services[1].name: service web is declared twice'],
    ['a port twice', JSON.stringify({ ...valid, services: [valid.services[0], { name: 'x', agent: 'east', public: ':8080' }] }), "services[1].public: *:8080 is already service web's"],
    ['a bad address', JSON.stringify({ ...valid, services: [{ name: 'web', agent: 'east', public: 'nowhere' }] }), 'services[0].public: expected host:port'],
    ['port 0', JSON.stringify({ ...valid, services: [{ name: 'web', agent: 'east', public: ':0' }] }), 'services[0].public: a public port is needed'],
    ['a bad PROXY version', JSON.stringify({ ...valid, services: [{ name: 'web', agent: 'east', public: ':1', proxyProtocol: 'v3' }] }), 'services[0].proxyProtocol: expected v1 or v2'],
    ['an unknown protocol', JSON.stringify({ ...valid, services: [{ name: 'web', agent: 'east', public: ':1', protocol: 'sctp' }] }), 'services[0].protocol: expected tcp or udp'],
    ['flow settings on a TCP service', JSON.stringify({ ...valid, services: [{ name: 'web', agent: 'east', public: ':1', maxFlows: 9 }] }), 'services[0].maxFlows: only for a UDP service'],
    ['a datagram maximum over UDP', JSON.stringify({ ...valid, services: [{ name: 'web', agent: 'east', public: ':1', protocol: 'udp', maxDatagram: 70_000 }] }), 'services[0].maxDatagram: expected a whole number of bytes from 1 to 65507'],
    ['PROXY on UDP', JSON.stringify({ ...valid, services: [{ name: 'web', agent: 'east', public: ':1', protocol: 'udp', proxyProtocol: 'v2' }] }), 'services[0].proxyProtocol: the PROXY protocol is for TCP'],
    ['a malformed fingerprint', JSON.stringify({ ...valid, agents: { east: { token: EAST, fingerprint: 'AB:CD' } } }), 'agents.east.fingerprint: expected the SHA-256 fingerprint'],
    ['an empty list of fingerprints', JSON.stringify({ ...valid, agents: { east: { token: EAST, fingerprint: [] } } }), 'agents.east.fingerprint: expected'],
    ['a bad name', JSON.stringify({ ...valid, services: [{ name: 'a b', agent: 'east', public: ':1' }] }), 'services[0].name:'],
  ])('refuses %s, naming the file and the key', (_label, text, message) => {
    expect(() => parseRelayConfig(text, 'relay.yaml', {})).toThrow(expect.objectContaining({ code: 'ERR_CONFIG', message: expect.stringContaining(`relay.yaml: ${message}`) }));
  });
});
