import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { listen } from '@pool/shared/internal';
import type { ServiceConfig } from './relay-config.js';
import type { ServiceStats } from './stats.js';
import { AdmittedUsers, type AdmissionLimits, type AdmissionRefusal } from './admitted-users.js';

/** One service's public port: users connect here and are tunnelled to the agent that serves it. */
export class PublicService {
  readonly config: ServiceConfig;
  readonly stats: ServiceStats & { refused: Record<AdmissionRefusal, number> };
  /** Its users, waiting for a pooled connection or in a tunnel. */
  readonly users: AdmittedUsers;
  readonly #server: Server;
  readonly #onError: (error: Error) => void;

  constructor(config: ServiceConfig, limits: AdmissionLimits, onUser: (user: Socket, service: PublicService) => void, onError: (error: Error) => void) {
    this.config = config;
    this.users = new AdmittedUsers(limits);
    this.stats = { agent: config.agent, accepted: 0, finished: 0, failed: 0, open: 0, refused: { serviceFull: 0, sourceFull: 0, sourceTunnels: 0, displaced: 0 } };
    // noDelay: tunnels carry request/response traffic; Nagle plus delayed ACKs would add tens of ms.
    // allowHalfOpen: a user's FIN ends one direction only; splice carries it to the target.
    this.#server = createServer({ allowHalfOpen: true, noDelay: true }, (user) => onUser(user, this));
    this.#onError = onError;
  }

  get listening(): boolean {
    return this.#server.listening;
  }

  /** Rejects with the listen error; only later errors go to `onError` (a failed listen is reported once, by the caller). */
  async listen(backlog: number): Promise<void> {
    await listen(this.#server, this.config.publicPort, this.config.publicHost, backlog);
    this.#server.on('error', this.#onError);
  }

  port(): number {
    return (this.#server.address() as AddressInfo).port;
  }

  /** Stops taking users; open tunnels go on. */
  close(): void {
    if (this.#server.listening) this.#server.close();
  }
}
