import { PoolAbortedError, PoolTimeoutError } from '../core/errors.js';

/** Options every get accepts besides its timeout. */
export interface GetOptions {
  /** Aborting rejects the get with `ERR_POOL_ABORTED` (the signal's reason as `cause`). */
  signal?: AbortSignal;
}

/**
 * One caller waiting for a connection: a promise plus the timer and abort
 * listener that may end the wait. Whoever settles it first wins; later calls
 * are no-ops that report `false`, so a pool never hands one connection to a
 * waiter that already gave up.
 */
export class PendingGet<T> {
  readonly promise: Promise<T>;
  #resolve!: (value: T) => void;
  #reject!: (error: Error) => void;
  #settled = false;
  readonly #timer: NodeJS.Timeout;
  readonly #signal: AbortSignal | undefined;
  readonly #onGiveUp: () => void;

  /**
   * @param timeoutMs how long to wait before `ERR_POOL_TIMEOUT`, in milliseconds.
   * @param onGiveUp called once if the wait ends by timeout or abort, to remove it from its queue.
   *   A signal that is already aborted settles the get at once without calling it:
   *   check `settled` before queueing.
   */
  constructor(timeoutMs: number, options: GetOptions, onGiveUp: () => void) {
    this.promise = new Promise<T>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.#onGiveUp = onGiveUp;
    this.#signal = options.signal;
    this.#timer = setTimeout(() => this.#giveUp(new PoolTimeoutError()), timeoutMs);
    if (this.#signal?.aborted) {
      this.reject(new PoolAbortedError(this.#signal.reason));
    } else {
      this.#signal?.addEventListener('abort', this.#onAbort, { once: true });
    }
  }

  get settled(): boolean {
    return this.#settled;
  }

  resolve(value: T): boolean {
    if (!this.#finish()) return false;
    this.#resolve(value);
    return true;
  }

  reject(error: Error): boolean {
    if (!this.#finish()) return false;
    this.#reject(error);
    return true;
  }

  #finish(): boolean {
    if (this.#settled) return false;
    this.#settled = true;
    clearTimeout(this.#timer);
    this.#signal?.removeEventListener('abort', this.#onAbort);
    return true;
  }

  #giveUp(error: Error): void {
    if (this.reject(error)) this.#onGiveUp();
  }

  readonly #onAbort = (): void => {
    this.#giveUp(new PoolAbortedError(this.#signal?.reason));
  };
}
