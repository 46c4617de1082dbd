import { EventEmitter } from 'node:events';

/**
 * Base of the pools, the relay and the agent: npws's error counter, and the
 * rule for errors that happen outside any call (a failed dial, a peer that
 * broke the protocol while idle): counted always, emitted as `'error'` only
 * when something listens, so a long-running process never dies of a peer's
 * misbehaviour.
 */
export class ErrorCountingEmitter extends EventEmitter {
  #errorCount = 0;

  /** Adds one to the error count (npws parity; the SDK counts its own errors too). */
  AddError(): void {
    this.#errorCount++;
  }

  /** Errors counted since construction or the last `ResetError()`. */
  ErrorCount(): number {
    return this.#errorCount;
  }

  ResetError(): void {
    this.#errorCount = 0;
  }

  protected readonly reportError = (error: Error): void => {
    this.#errorCount++;
    if (this.listenerCount('error') > 0) this.emit('error', error);
  };
}
