import { EventEmitter } from 'node:events';
import { silentLogger, type Logger } from './logger.js';

/**
 * Base of the pools, the relay and the agent: npws's error counter, and the
 * rule for errors that happen outside any call (a failed dial, a peer that
 * broke the protocol while idle): counted always, emitted as `'error'` only
 * when something listens, so a long-running process never dies of a peer's
 * misbehaviour. Each is also logged at `warn`.
 */
export class ErrorCountingEmitter extends EventEmitter {
  #errorCount = 0;
  protected readonly logger: Logger;

  constructor(logger: Logger = silentLogger) {
    super();
    this.logger = logger;
  }

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

  /** For errors a part (a pool) already counted and logged: counted here too, emitted, not logged twice. */
  protected readonly forwardError = (error: Error): void => {
    this.#errorCount++;
    if (this.listenerCount('error') > 0) this.emit('error', error);
  };

  protected readonly reportError = (error: Error): void => {
    this.#errorCount++;
    this.logger.warn({ err: error, code: (error as { code?: unknown }).code }, error.message);
    if (this.listenerCount('error') > 0) this.emit('error', error);
  };
}
