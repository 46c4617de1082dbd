import { isIP } from 'node:net';
import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';
import { PoolError, NAME_PATTERN, MAX_DATAGRAM_BYTES, parseFingerprint } from '@pool/shared/internal';
import { parseAllowlist } from '../pool/allowlist.js';

/** The YAML parser, loaded with the first configuration file: a relay without one keeps its heap small. */
const yaml = (): typeof import('yaml') => createRequire(import.meta.url)('yaml') as typeof import('yaml');

/** How a UDP service treats its flows (a flow: the datagrams of one user address and port). */
export interface UdpOptions {
  /** A flow with no datagram either way for this long is closed on both ends, in ms. Default: 60000. */
  idleTimeout?: number;
  /**
   * Most flows open at once. A datagram that would open one more closes the
   * least recently active flow to make room (counted in `flowsEvicted`), so a
   * spray of sources cannot lock new users out. Default: 1024.
   */
  maxFlows?: number;
  /**
   * Most flows of one source address (any port); its next one replaces its
   * own least recently active flow. Each flow is a socket on the agent's
   * host, so this also bounds what one address costs there. Default: a
   * sixteenth of `maxFlows`.
   */
  maxFlowsPerSource?: number;
  /**
   * Reflection budget: a flow sends its user at most this many times the
   * bytes it received from that address, plus 4 KiB, so a datagram with a
   * forged source cannot turn the service into an amplifier (the excess is
   * dropped, `replyBudget`). 0 switches the budget off (a service that
   * streams far more than it hears, such as a game state feed). Default: 10.
   */
  replyRatio?: number;
  /** The largest datagram carried, either way, in bytes; a larger one is dropped (and counted), never split. Default: 65507. */
  maxDatagram?: number;
}

/** The shortest token an agent may have: shorter ones could be guessed over the network. */
export const MIN_TOKEN_LENGTH = 16;

/** One agent the relay serves: its secret, and where it may connect from. */
export interface AgentConfig {
  /** The agent's own secret, presented in `x-pool-token`; it also names the agent. */
  token: string;
  /** IPs and CIDR ranges the agent may connect from. Default: anywhere the relay's `allow` admits. */
  allow?: readonly string[];
  /**
   * SHA-256 fingerprint of the certificate the agent presents (pool-agent
   * prints it; `AB:CD:…` or 64 hex digits). With it, a connection without
   * that key gets nothing, even with the token. A list while a key is
   * rotated: either key is the agent. Default: none.
   */
  fingerprint?: string | readonly string[];
}

/** One public port, tunnelled to one agent's service of the same name. */
export interface ServiceConfig {
  name: string;
  /** The agent that serves it (a key of `agents`). */
  agent: string;
  /** Interface users connect to. Default: all interfaces. */
  publicHost?: string;
  /** Port users connect to. */
  publicPort: number;
  /** Send the target a PROXY protocol header (v1 text or v2 binary) with the user's address. Default: none. TCP only. */
  proxyProtocol?: 'v1' | 'v2';
  /** What users speak on the public port. Default: `'tcp'`. */
  protocol?: 'tcp' | 'udp';
  /** Flow settings of a UDP service. */
  udp?: UdpOptions;
}

/** What a relay's configuration file holds. */
export interface RelayConfig {
  /** The agents' port, `host:port`. */
  listen?: { host: string | undefined; port: number };
  /** PEM files of the relay's certificate and key; a relative path is relative to the file's folder. */
  tls?: { cert: string; key: string };
  agents: Readonly<Record<string, AgentConfig>>;
  services: readonly ServiceConfig[];
}

/** A configuration that cannot be used; the message names the file and the key. */
export class ConfigError extends PoolError {
  constructor(file: string, key: string, problem: string) {
    super('ERR_CONFIG', `${file}: ${key}: ${problem}`);
  }
}

/** `${NAME}` in a string value stands for the environment variable NAME (which must be set). */
function substitute(value: string, file: string, key: string, env: NodeJS.ProcessEnv): string {
  return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_match, name: string) => {
    const replacement = env[name];
    if (replacement === undefined) throw new ConfigError(file, key, `environment variable ${name} is not set`);
    return replacement;
  });
}

/** `host:port`, `[v6]:port` or `:port` (all interfaces). */
function hostPort(value: unknown, file: string, key: string): { host: string | undefined; port: number } {
  const match = typeof value === 'string' ? /^(?:\[([^\]]+)\]|([^:\[\]]*)):(\d{1,5})$/.exec(value) : null;
  const port = Number(match?.[3]);
  const host = match?.[1] ?? match?.[2];
  if (!match || port > 65_535 || (host !== '' && host !== undefined && match[1] !== undefined && isIP(host) !== 6)) {
    throw new ConfigError(file, key, `expected host:port, [v6]:port or :port, got ${JSON.stringify(value)}`);
  }
  return { host: host === '' ? undefined : host, port };
}

function record(value: unknown, file: string, key: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ConfigError(file, key, 'expected a mapping');
  return value as Record<string, unknown>;
}

function allowedKeys(value: Record<string, unknown>, allowed: readonly string[], file: string, key: string): void {
  for (const name of Object.keys(value)) {
    if (!allowed.includes(name)) throw new ConfigError(file, `${key}${key ? '.' : ''}${name}`, `unknown key (expected one of ${allowed.join(', ')})`);
  }
}

/**
 * Parses and validates a relay configuration (YAML; JSON is YAML too) as a
 * whole: the first problem is thrown as a {@link ConfigError} naming the file
 * and the key. `${VAR}` in a value is replaced by the environment variable.
 */
export function parseRelayConfig(text: string, file: string, env: NodeJS.ProcessEnv = process.env): RelayConfig {
  let document: unknown;
  try {
    document = yaml().parse(text);
  } catch (error) {
    throw new ConfigError(file, '(document)', `not YAML or JSON: ${(error as Error).message.split('\n')[0]}`);
  }
  const root = record(document ?? {}, file, '(document)');
  allowedKeys(root, ['listen', 'tls', 'agents', 'services'], file, '');
  const config: { listen?: RelayConfig['listen']; tls?: RelayConfig['tls']; agents: Record<string, AgentConfig>; services: ServiceConfig[] } = { agents: {}, services: [] };
  if (root.listen !== undefined) config.listen = hostPort(root.listen, file, 'listen');
  if (root.tls !== undefined) {
    const tls = record(root.tls, file, 'tls');
    allowedKeys(tls, ['cert', 'key'], file, 'tls');
    if (typeof tls.cert !== 'string' || typeof tls.key !== 'string') throw new ConfigError(file, 'tls', 'expected cert and key, paths of PEM files');
    // Relative to the file, not to wherever the relay was started from (a systemd unit, say).
    const path = (name: 'cert' | 'key'): string => resolve(dirname(file), substitute(tls[name] as string, file, `tls.${name}`, env));
    config.tls = { cert: path('cert'), key: path('key') };
  }
  const agents = record(root.agents ?? {}, file, 'agents');
  if (Object.keys(agents).length === 0) throw new ConfigError(file, 'agents', 'at least one agent is needed');
  const tokens = new Map<string, string>();
  for (const [name, value] of Object.entries(agents)) {
    const key = `agents.${name}`;
    if (!NAME_PATTERN.test(name)) throw new ConfigError(file, key, 'an agent name is letters, digits, . _ - (up to 63)');
    const agent = record(value, file, key);
    allowedKeys(agent, ['token', 'allow', 'fingerprint'], file, key);
    if (typeof agent.token !== 'string') throw new ConfigError(file, `${key}.token`, 'expected a secret (a string; ${VAR} for an environment variable)');
    const token = substitute(agent.token, file, `${key}.token`, env);
    if (token.length < MIN_TOKEN_LENGTH) throw new ConfigError(file, `${key}.token`, `a token is at least ${MIN_TOKEN_LENGTH} characters`);
    const other = tokens.get(token);
    if (other !== undefined) throw new ConfigError(file, `${key}.token`, `the same as agents.${other}.token: each agent needs its own`);
    tokens.set(token, name);
    const entry: AgentConfig = { token };
    if (agent.allow !== undefined) {
      const allow = typeof agent.allow === 'string' ? [agent.allow] : agent.allow;
      if (!Array.isArray(allow) || !allow.every((item): item is string => typeof item === 'string')) throw new ConfigError(file, `${key}.allow`, 'expected IPs and CIDR ranges');
      try {
        parseAllowlist(allow);
      } catch (error) {
        throw new ConfigError(file, `${key}.allow`, (error as Error).message);
      }
      if (allow.length === 0) throw new ConfigError(file, `${key}.allow`, 'an empty allowlist admits nobody; leave it out to admit everyone the relay does');
      entry.allow = allow;
    }
    if (agent.fingerprint !== undefined) {
      const pins = typeof agent.fingerprint === 'string' ? [agent.fingerprint] : agent.fingerprint;
      const fingerprints = Array.isArray(pins) && pins.length > 0 ? pins.map((pin: unknown) => (typeof pin === 'string' ? parseFingerprint(substitute(pin, file, `${key}.fingerprint`, env)) : undefined)) : [undefined];
      if (fingerprints.includes(undefined)) {
        throw new ConfigError(file, `${key}.fingerprint`, 'expected the SHA-256 fingerprint pool-agent printed (AB:CD:… or 64 hex digits), or a list of them while a key is rotated');
      }
      entry.fingerprint = fingerprints.length === 1 ? fingerprints[0] : (fingerprints as string[]);
    }
    config.agents[name] = entry;
  }
  if (!Array.isArray(root.services) || root.services.length === 0) throw new ConfigError(file, 'services', 'expected a list of at least one service');
  const names = new Set<string>();
  const ports = new Map<string, string>();
  root.services.forEach((value: unknown, index: number) => {
    const key = `services[${index}]`;
    const service = record(value, file, key);
    allowedKeys(service, ['name', 'agent', 'public', 'proxyProtocol', 'protocol', 'idleTimeout', 'maxFlows', 'maxFlowsPerSource', 'maxDatagram', 'replyRatio'], file, key);
    if (typeof service.name !== 'string' || !NAME_PATTERN.test(service.name)) throw new ConfigError(file, `${key}.name`, 'a service name is letters, digits, . _ - (up to 63)');
    if (names.has(service.name)) throw new ConfigError(file, `${key}.name`, `service ${service.name} is declared twice`);
    names.add(service.name);
    if (typeof service.agent !== 'string' || config.agents[service.agent] === undefined) {
      throw new ConfigError(file, `${key}.agent`, `expected one of the agents (${Object.keys(config.agents).join(', ')})`);
    }
    const address = hostPort(service.public, file, `${key}.public`);
    if (address.port === 0) throw new ConfigError(file, `${key}.public`, 'a public port is needed (not 0)');
    if (service.protocol !== undefined && service.protocol !== 'tcp' && service.protocol !== 'udp') throw new ConfigError(file, `${key}.protocol`, 'expected tcp or udp');
    const protocol = service.protocol ?? 'tcp';
    const where = `${protocol === 'udp' ? 'udp ' : ''}${address.host ?? '*'}:${address.port}`;
    const clash = ports.get(where);
    if (clash !== undefined) throw new ConfigError(file, `${key}.public`, `${where} is already service ${clash}'s`);
    ports.set(where, service.name);
    if (service.proxyProtocol !== undefined && service.proxyProtocol !== 'v1' && service.proxyProtocol !== 'v2') {
      throw new ConfigError(file, `${key}.proxyProtocol`, 'expected v1 or v2');
    }
    const udp = udpOptions(service, protocol, file, key);
    if (protocol === 'udp' && service.proxyProtocol !== undefined) throw new ConfigError(file, `${key}.proxyProtocol`, 'the PROXY protocol is for TCP services');
    config.services.push({
      name: service.name,
      agent: service.agent,
      publicHost: address.host,
      publicPort: address.port,
      ...(service.proxyProtocol !== undefined && { proxyProtocol: service.proxyProtocol }),
      ...(protocol === 'udp' && { protocol, udp }),
    });
  });
  return config;
}

/** The UDP settings of a service entry: whole numbers in range, and only on a UDP service. */
function udpOptions(service: Record<string, unknown>, protocol: 'tcp' | 'udp', file: string, key: string): UdpOptions {
  const limits = {
    idleTimeout: [1, 2 ** 31 - 1, 'ms'],
    maxFlows: [1, 1_000_000, 'flows'],
    maxFlowsPerSource: [1, 1_000_000, 'flows'],
    maxDatagram: [1, MAX_DATAGRAM_BYTES, 'bytes'],
    replyRatio: [0, 1_000_000, 'times the bytes received'],
  } as const;
  const options: UdpOptions = {};
  for (const [name, [min, max, unit]] of Object.entries(limits)) {
    const value = service[name];
    if (value === undefined) continue;
    if (protocol !== 'udp') throw new ConfigError(file, `${key}.${name}`, 'only for a UDP service (protocol: udp)');
    if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) throw new ConfigError(file, `${key}.${name}`, `expected a whole number of ${unit} from ${min} to ${max}`);
    options[name as keyof UdpOptions] = value;
  }
  return options;
}
