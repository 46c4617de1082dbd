/** Why a user was turned away at the public port before it waited for anything. */
export type WaitingRefusal = 'serviceFull' | 'sourceFull';

/** How many users a service lets wait for a pooled connection at once. */
export interface WaitingLimits {
  /** Users of the service waiting at once. */
  maxWaiting: number;
  /** Of those, users from one source address. */
  maxWaitingPerSource: number;
}

/**
 * The users of one service waiting for a pooled connection, in all and by
 * source address: what an anonymous flood can make the relay hold is
 * bounded by `maxWaiting` users (each holding a socket and at most one
 * buffered read), and one address cannot take more than its share of that.
 */
export class WaitingUsers {
  readonly #limits: WaitingLimits;
  readonly #countBySource = new Map<string, number>();
  #size = 0;

  constructor(limits: WaitingLimits) {
    this.#limits = limits;
  }

  get size(): number {
    return this.#size;
  }

  /** Counts a user from `source` as waiting, or says why it may not wait (and counts nothing). */
  admit(source: string): WaitingRefusal | undefined {
    const fromSource = this.#countBySource.get(source) ?? 0;
    if (this.#size >= this.#limits.maxWaiting) return 'serviceFull';
    if (fromSource >= this.#limits.maxWaitingPerSource) return 'sourceFull';
    this.#countBySource.set(source, fromSource + 1);
    this.#size++;
    return undefined;
  }

  /** A user admitted from `source` no longer waits (served, refused or gone). */
  release(source: string): void {
    const fromSource = this.#countBySource.get(source);
    if (fromSource === undefined) return;
    if (fromSource <= 1) this.#countBySource.delete(source);
    else this.#countBySource.set(source, fromSource - 1);
    this.#size--;
  }
}
