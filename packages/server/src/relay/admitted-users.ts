/** Why a user was turned away at the public port, or taken off the waiting list, before it was served. */
export type AdmissionRefusal = 'serviceFull' | 'sourceFull' | 'sourceTunnels' | 'displaced';

/** How many users a service takes: waiting for a pooled connection, and in tunnels. */
export interface AdmissionLimits {
  /** Users of the service waiting at once. */
  maxWaiting: number;
  /** Of those, users from one source address. */
  maxWaitingPerSource: number;
  /** Tunnels open at once from one source address, waiting users included; 0: no limit. */
  maxTunnelsPerSource: number;
}

/** One admitted user, from its admission until its tunnel ends. */
export interface Admission {
  /** It got its tunnel: it no longer waits, and counts towards its address's tunnels until `ended()`. */
  served(): void;
  /** It is gone: no longer waiting, or its tunnel ended. Idempotent. */
  ended(): void;
}

/** A waiting user, as the waiting list knows it. */
interface WaitingEntry {
  readonly source: string;
  readonly displace: () => void;
  state: 'waiting' | 'tunnel' | 'ended';
}

/**
 * The users one service has taken, each waiting for a pooled connection or in
 * a tunnel, by source address. What an anonymous flood can make the relay
 * hold is bounded by `maxWaiting` waiting users (each a socket and at most
 * one buffered read). One address may fill the list (a NAT's burst), but when
 * it is full a user from another address takes the place of the newest
 * waiting user of the address that holds the most (counted `displaced`), so a
 * flood from one address cannot lock the others out.
 */
export class AdmittedUsers {
  readonly #limits: AdmissionLimits;
  /** Waiting users by address, oldest first. */
  readonly #waitingBySource = new Map<string, Set<WaitingEntry>>();
  readonly #tunnelsBySource = new Map<string, number>();
  #waiting = 0;

  constructor(limits: AdmissionLimits) {
    this.#limits = limits;
  }

  /** Users waiting for a pooled connection now. */
  get waiting(): number {
    return this.#waiting;
  }

  /**
   * Admits a user from `source` to wait, or says why not. `displace` is called
   * if a user from another address later takes its place on a full list (it
   * must then close the user; its admission has ended).
   */
  admit(source: string, displace: () => void): Admission | Exclude<AdmissionRefusal, 'displaced'> {
    const { maxWaiting, maxWaitingPerSource, maxTunnelsPerSource } = this.#limits;
    const own = this.#waitingBySource.get(source)?.size ?? 0;
    if (own >= maxWaitingPerSource) return 'sourceFull';
    if (maxTunnelsPerSource > 0 && own + (this.#tunnelsBySource.get(source) ?? 0) >= maxTunnelsPerSource) return 'sourceTunnels';
    if (this.#waiting >= maxWaiting && !this.#displaceForShare(own)) return 'serviceFull';
    const entry: WaitingEntry = { source, displace, state: 'waiting' };
    let waiting = this.#waitingBySource.get(source);
    if (waiting === undefined) this.#waitingBySource.set(source, (waiting = new Set()));
    waiting.add(entry);
    this.#waiting++;
    return {
      served: () => {
        if (entry.state !== 'waiting') return;
        this.#stopWaiting(entry);
        entry.state = 'tunnel';
        this.#tunnelsBySource.set(source, (this.#tunnelsBySource.get(source) ?? 0) + 1);
      },
      ended: () => this.#end(entry),
    };
  }

  /** On a full list: takes the newest waiting user of the address holding the most, if it holds more than one over `own`. */
  #displaceForShare(own: number): boolean {
    let heaviest: Set<WaitingEntry> | undefined;
    for (const waiting of this.#waitingBySource.values()) if (heaviest === undefined || waiting.size > heaviest.size) heaviest = waiting;
    if (heaviest === undefined || heaviest.size <= own + 1) return false;
    const newest = [...heaviest].at(-1)!;
    this.#end(newest);
    newest.displace();
    return true;
  }

  #end(entry: WaitingEntry): void {
    if (entry.state === 'waiting') this.#stopWaiting(entry);
    else if (entry.state === 'tunnel') {
      const tunnels = (this.#tunnelsBySource.get(entry.source) ?? 1) - 1;
      if (tunnels === 0) this.#tunnelsBySource.delete(entry.source);
      else this.#tunnelsBySource.set(entry.source, tunnels);
    }
    entry.state = 'ended';
  }

  #stopWaiting(entry: WaitingEntry): void {
    const waiting = this.#waitingBySource.get(entry.source)!;
    waiting.delete(entry);
    if (waiting.size === 0) this.#waitingBySource.delete(entry.source);
    this.#waiting--;
  }
}
