/**
 * What the SDK logs through: pino's calling convention (an object of fields
 * first, then a message), so a pino logger, or a child of one, can be passed
 * as it is. Fields use pino's names: `err` for an error.
 */
export interface Logger {
  debug(fields: object, message?: string): void;
  info(fields: object, message?: string): void;
  warn(fields: object, message?: string): void;
  error(fields: object, message?: string): void;
}

const ignore = (): void => {};

/** The default: a library says nothing unless its user asks. */
export const silentLogger: Logger = { debug: ignore, info: ignore, warn: ignore, error: ignore };
