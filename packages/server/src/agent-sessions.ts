import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { SESSION_HEADER } from '@pool/shared/internal';
import { parseAllowlist, type Allowlist } from './allowlist.js';
import type { ControlSession } from './control-session.js';

/** One agent the relay knows: its session (issued on its control channel) and the services it serves. */
export interface AgentState {
  readonly name: string;
  /** Where this agent may connect from; undefined: anywhere the relay admits. */
  allowlist: Allowlist | undefined;
  /** The secret its pooled connections present, and the agent instance it was issued to. */
  session: { secret: Buffer; text: string; instanceId: string } | undefined;
  control: ControlSession | undefined;
  /** Users' claims waiting for this agent's control channel to come back. */
  readonly controlWaiters: Set<() => void>;
  /** Services it declared that the relay's configuration gives it. */
  services: ReadonlySet<string>;
}

/** The agents of a relay, by name, and what binds a pooled connection to one of them. */
export class AgentSessions {
  readonly #agentByName = new Map<string, AgentState>();
  /** Set when agents are named by their tokens; otherwise every admitted client is the one unnamed agent. */
  #named: boolean;

  constructor(agents: ReadonlyMap<string, readonly string[] | undefined>, named: boolean) {
    this.#named = named;
    this.update(agents, named);
  }

  /** The agents now configured (name → allowlist); gone ones are returned so the caller can end them. */
  update(agents: ReadonlyMap<string, readonly string[] | undefined>, named: boolean): AgentState[] {
    this.#named = named;
    const gone = [...this.#agentByName.values()].filter((agent) => !agents.has(agent.name));
    for (const agent of gone) this.#agentByName.delete(agent.name);
    for (const [name, allow] of agents) {
      const allowlist = allow === undefined ? undefined : parseAllowlist(allow);
      const known = this.#agentByName.get(name);
      if (known) known.allowlist = allowlist;
      else this.#agentByName.set(name, { name, allowlist, session: undefined, control: undefined, controlWaiters: new Set(), services: new Set() });
    }
    return gone;
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
  agentOf(request: IncomingMessage, client: string): AgentState | undefined {
    const agent = this.#named ? this.#agentByName.get(client) : this.#agentByName.values().next().value;
    if (agent?.allowlist && !agent.allowlist.allows(request.socket.remoteAddress)) return undefined;
    return agent;
  }

  /**
   * The session for a control channel of `agent` from instance `instanceId`:
   * the same one when that instance reconnects (its pooled connections stay
   * good), a new one for a new instance. `renewed` says the old connections
   * can no longer be claimed.
   */
  sessionFor(agent: AgentState, instanceId: string): { text: string; renewed: boolean } {
    if (agent.session?.instanceId === instanceId) return { text: agent.session.text, renewed: false };
    const secret = randomBytes(32);
    agent.session = { secret, text: secret.toString('base64url'), instanceId };
    return { text: agent.session.text, renewed: true };
  }

  /**
   * For `ServerPool`'s `bind`: a pooled connection belongs to the agent whose
   * live session secret it presents (compared in constant time); anything
   * else is refused with 401, so that a token alone never puts a connection
   * in front of users.
   */
  readonly bind = (request: IncomingMessage, client: string): string | 401 => {
    const agent = this.agentOf(request, client);
    const presented = request.headers[SESSION_HEADER];
    if (agent?.session === undefined || typeof presented !== 'string') return 401;
    const candidate = Buffer.from(presented, 'base64url');
    const { secret } = agent.session;
    return candidate.length === secret.length && timingSafeEqual(candidate, secret) ? agent.name : 401;
  };
}
