import { randomBytes, timingSafeEqual } from 'node:crypto';
import { TLSSocket } from 'node:tls';
import { SESSION_HEADER, parseFingerprint } from '@pool/shared/internal';
import { InvalidOptionError } from '@pool/shared';
import type { PoolRequest } from '../pool/admission.js';
import { parseAllowlist, type Allowlist } from '../pool/allowlist.js';
import type { ControlSession } from './control-session.js';

/** One agent the relay knows: its session (issued on its control channel) and the services it serves. */
export interface AgentState {
  readonly name: string;
  /** Where this agent may connect from; undefined: anywhere the relay admits. */
  allowlist: Allowlist | undefined;
  /** SHA-256 fingerprints (`AB:CD:…`) of the certificates this agent may present (two while a key is rotated); undefined: a token is enough. */
  fingerprints: ReadonlySet<string> | undefined;
  /** When it last left (drained), `performance.now()` ms: users wait for its successor for a while instead of being refused. */
  leftAt: number | undefined;
  /** The secret its pooled connections present, the agent instance it was issued to, and the key that instance proved (if any). */
  session: { secret: Buffer; text: string; instanceId: string; key: string | undefined } | undefined;
  control: ControlSession | undefined;
  /** Users' claims waiting for this agent's control channel to come back. */
  readonly controlWaiters: Set<() => void>;
  /** Services it declared that the relay's configuration gives it. */
  services: ReadonlySet<string>;
}

/** What the relay's configuration says of one agent, as far as telling it apart goes. */
export interface AgentIdentity {
  /** IPs and CIDR ranges it may connect from; undefined: anywhere the relay admits. */
  allow?: readonly string[];
  /**
   * SHA-256 fingerprint of its client certificate (any form `parseFingerprint`
   * takes), or several while a key is rotated; undefined: none required.
   */
  fingerprint?: string | readonly string[];
}

/** The agents of a relay, by name, and what binds a pooled connection to one of them. */
export class AgentSessions {
  readonly #agentByName = new Map<string, AgentState>();
  /** Set when agents are named by their tokens; otherwise every admitted client is the one unnamed agent. */
  #named: boolean;

  constructor(agents: ReadonlyMap<string, AgentIdentity>, named: boolean) {
    this.#named = named;
    this.update(agents, named);
  }

  /**
   * The agents now configured; gone ones are returned so the caller can end
   * them, and so are those whose live session was opened with a key that is
   * no longer pinned (or with none, where one now is). Throws
   * `ERR_INVALID_OPTION`, changing nothing, for a malformed fingerprint.
   */
  update(agents: ReadonlyMap<string, AgentIdentity>, named: boolean): AgentState[] {
    const parsed = AgentSessions.check(agents);
    this.#named = named;
    const ended = [...this.#agentByName.values()].filter((agent) => !agents.has(agent.name));
    for (const agent of ended) this.#agentByName.delete(agent.name);
    for (const { name, allowlist, fingerprints } of parsed) {
      const known = this.#agentByName.get(name);
      if (known === undefined) {
        this.#agentByName.set(name, { name, allowlist, fingerprints, session: undefined, leftAt: undefined, control: undefined, controlWaiters: new Set(), services: new Set() });
        continue;
      }
      known.allowlist = allowlist;
      known.fingerprints = fingerprints;
      // Whoever holds the session proved a key that may no longer be pinned: it must prove one that is.
      if (known.session !== undefined && fingerprints !== undefined && !fingerprints.has(known.session.key ?? '')) {
        known.session = undefined;
        ended.push(known);
      }
    }
    return ended;
  }

  /** Parses what identifies each agent; throws `ERR_INVALID_OPTION` for a malformed allowlist or fingerprint. */
  static check(agents: ReadonlyMap<string, AgentIdentity>): Array<Pick<AgentState, 'name' | 'allowlist' | 'fingerprints'>> {
    return [...agents].map(([name, identity]) => ({
      name,
      allowlist: identity.allow === undefined ? undefined : parseAllowlist(identity.allow),
      fingerprints: identity.fingerprint === undefined ? undefined : fingerprintSet(name, identity.fingerprint),
    }));
  }

  get(name: string): AgentState | undefined {
    return this.#agentByName.get(name);
  }

  all(): IterableIterator<AgentState> {
    return this.#agentByName.values();
  }

  /**
   * The agent an admitted request comes from: the name of the token it
   * presented when agents are named, else the one unnamed agent. Undefined
   * for a client that is no agent of ours, or one outside its allowlist.
   */
  agentOf(request: PoolRequest, client: string): AgentState | undefined {
    const agent = this.#named ? this.#agentByName.get(client) : this.#agentByName.values().next().value;
    if (agent?.allowlist && !agent.allowlist.allows(request.socket.remoteAddress)) return undefined;
    return agent;
  }

  /**
   * Whether a request's connection carries the key `agent` must prove: the
   * client certificate of its TLS handshake has the pinned fingerprint
   * (always true for an agent without a pin). TLS resumption keeps the
   * certificate of the handshake that issued the ticket, so a resumed
   * connection is judged by it too.
   */
  presentsKey(agent: AgentState, request: PoolRequest): boolean {
    return agent.fingerprints === undefined || agent.fingerprints.has(keyOf(request) ?? '');
  }

  /**
   * The session for a control channel of `agent` from instance `instanceId`:
   * the same one when that instance reconnects (its pooled connections stay
   * good), a new one for a new instance. `renewed` says the old connections
   * can no longer be claimed.
   */
  sessionFor(agent: AgentState, instanceId: string, request: PoolRequest): { text: string; renewed: boolean } {
    const key = keyOf(request);
    if (agent.session?.instanceId === instanceId) {
      agent.session.key = key;
      return { text: agent.session.text, renewed: false };
    }
    const secret = randomBytes(32);
    agent.session = { secret, text: secret.toString('base64url'), instanceId, key };
    return { text: agent.session.text, renewed: true };
  }

  /**
   * For `ServerPool`'s `bind`: a pooled connection belongs to the agent whose
   * live session secret it presents (compared in constant time); anything
   * else is refused with 401, so that a token alone never puts a connection
   * in front of users.
   */
  readonly bind = (request: PoolRequest, client: string): string | 401 => {
    const agent = this.agentOf(request, client);
    const presented = request.headers[SESSION_HEADER];
    if (agent?.session === undefined || typeof presented !== 'string' || !this.presentsKey(agent, request)) return 401;
    const candidate = Buffer.from(presented, 'base64url');
    const { secret } = agent.session;
    return candidate.length === secret.length && timingSafeEqual(candidate, secret) ? agent.name : 401;
  };
}

/** The SHA-256 fingerprint of the client certificate a request's TLS connection presented, if any. */
function keyOf(request: PoolRequest): string | undefined {
  const { socket } = request;
  return socket instanceof TLSSocket ? socket.getPeerCertificate().fingerprint256 : undefined;
}

function fingerprintSet(agent: string, pins: string | readonly string[]): ReadonlySet<string> {
  const list = typeof pins === 'string' ? [pins] : pins;
  if (list.length === 0) throw new InvalidOptionError(`agents.${agent}.fingerprint`, '[]', 'at least one fingerprint (leave it out to pin none)');
  return new Set(
    list.map((pin) => {
      const fingerprint = parseFingerprint(pin);
      if (fingerprint === undefined) throw new InvalidOptionError(`agents.${agent}.fingerprint`, pin, 'a SHA-256 fingerprint: 32 bytes as AB:CD:… or 64 hex digits');
      return fingerprint;
    }),
  );
}
