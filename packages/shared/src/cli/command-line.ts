import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import type { Registry } from 'prom-client';
import { promClient } from '../observability/prom-client.js';
import { InvalidOptionError } from '../core/errors.js';
import { listen } from '../pool/listen.js';
import type { Logger } from '../observability/logger.js';

/** One command-line flag; each can also be set by the env var `POOL_<FLAG_NAME>`. */
export interface FlagSpec {
  type: 'string' | 'boolean';
  description: string;
  default?: string;
  /** May be given more than once (the env var: comma-separated); the value is then a list. */
  multiple?: boolean;
  /** A whole number within [min, max]: checked before anything starts, like every flag. */
  range?: readonly [number, number];
  /** A boolean flag this one only makes sense with: given (flag or env var) without it, it is an error rather than ignored. */
  requires?: string;
}

/** The range of a duration flag, in ms: what a Node timer can hold. */
export const MS_RANGE = [0, 2 ** 31 - 1] as const;
/** The range of a port flag (0: any free port). */
export const PORT_RANGE = [0, 65_535] as const;

const TRUE_WORDS = /^(1|true|yes|on)$/i;
const FALSE_WORDS = /^(0|false|no|off)$/i;

/** Why a flag or env var was refused; the message names it as the user wrote it. */
function flagError(source: string, value: unknown, expected: string): Error {
  return new InvalidOptionError(source, value, expected);
}

export type FlagValues = Record<string, string | boolean | string[] | undefined>;

/** For each parse result, the flags the user gave (by flag or env var), as opposed to defaults. */
const givenByResult = new WeakMap<FlagValues, ReadonlySet<string>>();

/** Whether the user gave `name` (as a flag or its env var), rather than it holding its default. */
export function wasGiven(values: FlagValues, name: string): boolean {
  return givenByResult.get(values)?.has(name) ?? false;
}

/** `tls-cert` → `POOL_TLS_CERT`. */
export function envNameOf(flag: string): string {
  return `POOL_${flag.toUpperCase().replaceAll('-', '_')}`;
}

/**
 * Parses flags (which win), then env vars, then defaults, and checks every
 * value against its spec before anything starts. Returns undefined after
 * printing usage for `--help`; throws one readable line, naming the flag or
 * env var as the user wrote it, on an unknown flag, a missing value or a bad one.
 */
export function parseCommandLine(
  command: string,
  summary: string,
  flags: Record<string, FlagSpec>,
  argv: string[] = process.argv.slice(2),
  env: NodeJS.ProcessEnv = process.env,
): FlagValues | undefined {
  let values: FlagValues;
  let tokens: ReturnType<typeof parseArgs>['tokens'];
  try {
    ({ values, tokens } = parseArgs({
      // pnpm passes the `--` of `pnpm run x -- --flag` through: it is not an argument.
      args: argv.filter((arg) => arg !== '--'),
      options: {
        help: { type: 'boolean', short: 'h' },
        ...Object.fromEntries(Object.entries(flags).map(([name, spec]) => [name, { type: spec.type, multiple: spec.multiple === true }])),
      },
      strict: true,
      tokens: true,
    }));
  } catch (error) {
    // parseArgs explains over several lines; one is enough ("--port -1": use --port=-1).
    throw new Error(String((error as Error).message).split('\n')[0]!.replace(/argument is ambiguous\.?$/, 'needs a value (write --name=-value for one that starts with a dash)'));
  }
  if (values.help) {
    const width = Math.max(...Object.keys(flags).map((name) => name.length)) + 8;
    const lines = Object.entries(flags).map(([name, spec]) => {
      const flag = `  --${name}${spec.type === 'string' ? ' <v>' : ''}`.padEnd(width + 4);
      const repeat = spec.multiple ? ' (repeatable)' : '';
      const fallback = spec.default === undefined ? '' : ` (default: ${spec.default})`;
      return `${flag} ${spec.description}${repeat}${fallback}  [${envNameOf(name)}]`;
    });
    process.stdout.write(`Usage: ${command} [flags]\n\n${summary}\n\nFlags (or the env var in brackets):\n${lines.join('\n')}\n  --help, -h${' '.repeat(width - 6)} this text\n`);
    return undefined;
  }
  // A flag that takes one value, given twice, would silently keep the last: the user meant both.
  const seen = new Set<string>();
  for (const token of tokens ?? []) {
    if (token.kind !== 'option' || flags[token.name]?.multiple) continue;
    if (seen.has(token.name)) throw new Error(`--${token.name} is given more than once; it takes one value`);
    seen.add(token.name);
  }
  const result: FlagValues = {};
  const given = new Set<string>();
  for (const [name, spec] of Object.entries(flags)) {
    const fromEnv = env[envNameOf(name)];
    const fromFlag = values[name];
    if (fromFlag !== undefined || fromEnv !== undefined) given.add(name);
    if (spec.multiple) {
      result[name] = fromFlag ?? fromEnv?.split(',').map((entry) => entry.trim()).filter(Boolean) ?? [];
      continue;
    }
    const source = fromFlag !== undefined ? `--${name}` : fromEnv !== undefined ? envNameOf(name) : `--${name} (default)`;
    if (fromFlag === undefined && fromEnv !== undefined && spec.type === 'boolean') {
      if (!TRUE_WORDS.test(fromEnv) && !FALSE_WORDS.test(fromEnv)) throw flagError(source, fromEnv, 'one of 1, true, yes, on, 0, false, no, off');
      result[name] = TRUE_WORDS.test(fromEnv);
      continue;
    }
    const value = fromFlag ?? fromEnv ?? spec.default;
    result[name] = value;
    if (spec.range && value !== undefined) {
      const [min, max] = spec.range;
      const number = Number(value);
      if (typeof value !== 'string' || !/^-?\d+$/.test(value.trim()) || number < min || number > max) {
        throw flagError(source, value, `a whole number from ${min} to ${max}`);
      }
    }
  }
  for (const name of given) {
    const required = flags[name]!.requires;
    if (required !== undefined && result[required] !== true) throw new Error(`--${name} only applies with --${required}; give both, or neither`);
  }
  givenByResult.set(result, given);
  return result;
}

/** A numeric flag value, or a readable error naming the flag. */
export function numberFlag(values: FlagValues, name: string): number {
  const value = Number(values[name]);
  if (values[name] === undefined || values[name] === '' || !Number.isFinite(value)) {
    throw new Error(`--${name} must be a number (got ${JSON.stringify(values[name])})`);
  }
  return value;
}

/**
 * Runs `close` on the first SIGINT/SIGTERM and exits 0 when it finishes (1 if
 * it throws); a second signal exits at once. Prints the status line (or
 * lines: one per relay of an agent) every `statusMs` (0: never).
 */
export function runUntilSignal(command: string, close: () => Promise<void>, status: () => string | string[], statusMs: number): void {
  const print = (): void => {
    for (const line of [status()].flat()) process.stdout.write(`${command} status ${line}\n`);
  };
  const ticker = statusMs > 0 ? setInterval(print, statusMs) : undefined;
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) process.exit(1);
    stopping = true;
    clearInterval(ticker);
    process.stdout.write(`${command} ${signal}: shutting down\n`);
    close().then(
      () => process.exit(0),
      (error: unknown) => {
        process.stderr.write(`${command}: ${String(error)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
type LogLevel = (typeof LOG_LEVELS)[number];

/**
 * A small pino-shaped logger for the CLIs: one JSON object per line, with
 * `level`, `time` (ms since the epoch), `msg` and the fields; an `err` field
 * is written as its message and code. Levels below `level` are dropped;
 * `'off'` drops everything.
 */
export function createLineLogger(level: string, write: (line: string) => void): Logger {
  const threshold = level === 'off' ? LOG_LEVELS.length : LOG_LEVELS.indexOf(level as LogLevel);
  if (threshold < 0) throw new InvalidOptionError('--log-level', level, `one of off, ${LOG_LEVELS.join(', ')}`);
  const at =
    (rank: number, name: LogLevel) =>
    (fields: object, message?: string): void => {
      if (rank < threshold) return;
      const { err, ...rest } = fields as { err?: unknown };
      const error = err instanceof Error ? { message: err.message, code: (err as { code?: unknown }).code } : err;
      write(`${JSON.stringify({ level: name, time: Date.now(), msg: message, ...rest, ...(error !== undefined && { err: error }) })}\n`);
    };
  return { debug: at(0, 'debug'), info: at(1, 'info'), warn: at(2, 'warn'), error: at(3, 'error') };
}

/** An answer to a `GET` beside `/metrics` (a health check), or undefined for 404. */
export type ExtraRoute = (path: string) => { status: number; body: string } | undefined;

/**
 * Serves `registry` in the Prometheus text format on `GET /metrics`, and
 * what `extra` answers for other paths (404 for anything else). Resolves once
 * listening; rejects with the listen error. Later server errors go to `onError`.
 */
export async function serveMetrics(registry: Registry, host: string, port: number, onError: (error: Error) => void, extra?: ExtraRoute): Promise<Server> {
  const server = createServer((request, response) => {
    const path = request.url?.split('?', 1)[0] ?? '/';
    const answer = request.method === 'GET' && path !== '/metrics' ? extra?.(path) : undefined;
    if (answer !== undefined) {
      response.writeHead(answer.status, { 'Content-Type': 'text/plain', 'Cache-Control': 'no-store' }).end(`${answer.body}\n`);
      return;
    }
    if (request.method !== 'GET' || path !== '/metrics') {
      response.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found');
      return;
    }
    registry.metrics().then(
      (text) => response.writeHead(200, { 'Content-Type': registry.contentType }).end(text),
      (error: unknown) => response.writeHead(500, { 'Content-Type': 'text/plain' }).end(String(error)),
    );
  });
  await listen(server, port, host);
  server.on('error', onError);
  return server;
}

/** The flags both CLIs take for operating them: shutdown drain, metrics and logs. */
export const OPERATION_FLAGS: Record<string, FlagSpec> = {
  'drain-timeout': { type: 'string', description: 'on SIGTERM/SIGINT, how long open tunnels get to finish, ms', default: '10000', range: MS_RANGE },
  'metrics-port': { type: 'string', description: 'serve Prometheus metrics on GET /metrics at this port (default: off)', range: PORT_RANGE },
  'metrics-host': { type: 'string', description: 'interface for the metrics port', default: '127.0.0.1' },
  'log-level': { type: 'string', description: 'JSON log lines on stderr: off | error | warn | info | debug', default: 'info' },
};

/** A relay or an agent, as far as shutting it down goes. */
interface Stoppable {
  drain(timeoutMs: number): Promise<unknown>;
  close(): Promise<void>;
}

/**
 * What {@link OPERATION_FLAGS} ask for: a logger to stderr, a metrics
 * registry (when `--metrics-port` is set) and its server, and the shutdown
 * that drains before it closes.
 */
export class CliOperations {
  readonly logger: Logger;
  /** Pass as the `metrics` option; undefined without `--metrics-port`. */
  readonly metrics: { registry: Registry } | undefined;
  readonly #flags: FlagValues;
  readonly #drainTimeoutMs: number;
  #metricsServer: Server | undefined;

  constructor(flags: FlagValues) {
    this.#flags = flags;
    // Status lines are best effort: a reader that went away (`| head`, a closed terminal) must not take the tunnels down.
    for (const stream of [process.stdout, process.stderr]) stream.on('error', () => {});
    this.logger = createLineLogger(String(flags['log-level']), (line) => process.stderr.write(line));
    this.metrics = flags['metrics-port'] === undefined ? undefined : { registry: new (promClient().Registry)() };
    // The process's own series (open fds, heap, event-loop lag) beside the pool's: what an operator watches for leaks.
    if (this.metrics) promClient().collectDefaultMetrics({ register: this.metrics.registry });
    this.#drainTimeoutMs = numberFlag(flags, 'drain-timeout');
  }

  /** Starts the metrics server if asked (with `extra` routes beside `/metrics`); returns ` metrics-port=N` for the ready line, or ''. */
  async serveMetrics(extra?: ExtraRoute): Promise<string> {
    if (this.metrics === undefined) return '';
    const flags = this.#flags;
    this.#metricsServer = await serveMetrics(
      this.metrics.registry,
      String(flags['metrics-host']),
      numberFlag(flags, 'metrics-port'),
      (error) => this.logger.error({ err: error }, 'metrics server failed'),
      extra,
    );
    return ` metrics-port=${(this.#metricsServer.address() as AddressInfo).port}`;
  }

  /** Drains `target` for `--drain-timeout`, closes it, then the metrics server. */
  async shutDown(target: Stoppable): Promise<void> {
    await target.drain(this.#drainTimeoutMs);
    await target.close();
    this.#metricsServer?.close();
  }
}
