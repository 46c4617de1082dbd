/** The open connections of one client on the relay. */
export interface ClientGroup {
  /** The client's identity: its token's name when named tokens are in use, else its IP. */
  readonly client: string;
  open: number;
}

/**
 * Live connections grouped by client, so an application can hold state per
 * client and release it when the client has gone: `onUp` runs when a client's
 * first connection arrives, `onDown` exactly once when its last one closes.
 * O(1) per connection.
 */
export class ClientGroups {
  readonly #groupByClient = new Map<string, ClientGroup>();
  readonly #onUp: (client: string) => void;
  readonly #onDown: (client: string) => void;

  constructor(onUp: (client: string) => void, onDown: (client: string) => void) {
    this.#onUp = onUp;
    this.#onDown = onDown;
  }

  /** Clients with at least one open connection. */
  get size(): number {
    return this.#groupByClient.size;
  }

  /** A connection of `client` has arrived; pass the group to `leave` when it closes. */
  join(client: string): ClientGroup {
    let group = this.#groupByClient.get(client);
    if (group === undefined) {
      group = { client, open: 0 };
      this.#groupByClient.set(client, group);
    }
    if (++group.open === 1) this.#onUp(client);
    return group;
  }

  /** One of the group's connections has closed. Call once per `join`. */
  leave(group: ClientGroup): void {
    if (group.open === 0) return;
    group.open--;
    if (group.open > 0 || this.#groupByClient.get(group.client) !== group) return;
    this.#groupByClient.delete(group.client);
    this.#onDown(group.client);
  }
}
