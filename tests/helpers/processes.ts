import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const RELAY_BIN = `${ROOT}packages/server/dist/bin/pool-relay.js`;
export const AGENT_BIN = `${ROOT}packages/client/dist/bin/pool-agent.js`;

/** A CLI running as a real child process, with its stdout kept line by line. */
export class CliProcess {
  readonly child: ChildProcess;
  readonly lines: string[] = [];
  readonly #waiters: Array<{ pattern: RegExp; resolve: (match: RegExpMatchArray) => void }> = [];
  readonly exited: Promise<number | null>;

  /** `nodeArgs` go to node itself, before the script (`--expose-gc`, …); `env` adds to the environment. */
  constructor(bin: string, args: string[], nodeArgs: string[] = [], env: Record<string, string> = {}) {
    this.child = spawn(process.execPath, [...nodeArgs, bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    this.exited = new Promise((resolve) => this.child.once('exit', (code) => resolve(code)));
    const onLine = (line: string): void => {
      this.lines.push(line);
      for (const waiter of [...this.#waiters]) {
        const match = line.match(waiter.pattern);
        if (match) {
          this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
          waiter.resolve(match);
        }
      }
    };
    createInterface({ input: this.child.stdout! }).on('line', onLine);
    createInterface({ input: this.child.stderr! }).on('line', (line) => onLine(`stderr: ${line}`));
  }

  /** Resolves with the first line from now on (or already seen, if `seen`) matching `pattern`; rejects after `timeoutMs`. */
  waitFor(pattern: RegExp, timeoutMs = 10_000, seen = false): Promise<RegExpMatchArray> {
    if (seen) {
      const match = this.lines.map((line) => line.match(pattern)).find(Boolean);
      if (match) return Promise.resolve(match);
    }
    return new Promise((resolve, reject) => {
      const waiter = {
        pattern,
        resolve: (match: RegExpMatchArray) => {
          clearTimeout(timer);
          resolve(match);
        },
      };
      const timer = setTimeout(() => {
        this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
        reject(new Error(`no line matching ${pattern} within ${timeoutMs} ms; output:\n${this.lines.join('\n')}`));
      }, timeoutMs);
      this.#waiters.push(waiter);
    });
  }

  /** The `key=value` pairs of the latest status line, or undefined before the first one. */
  latestStatus(): Record<string, string> | undefined {
    const line = this.lines.findLast((candidate) => / status /.test(candidate));
    if (line === undefined) return undefined;
    return Object.fromEntries([...line.matchAll(/(\S+?)=(\S+)/g)].map((m) => [m[1]!, m[2]!]));
  }

  /** Polls status lines (bounded by `timeoutMs`) until `predicate` holds; resolves with that status. */
  async waitForStatus(predicate: (status: Record<string, string>) => boolean, timeoutMs: number): Promise<Record<string, string>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const status = this.latestStatus();
      if (status && predicate(status)) return status;
      if (Date.now() > deadline) throw new Error(`status never matched within ${timeoutMs} ms; last: ${JSON.stringify(status)}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  /**
   * A status line printed after now: the second one to arrive from now on (the
   * first may have been printed before now and still be on its way through the pipe).
   */
  async statusFromNow(timeoutMs = 5_000): Promise<Record<string, string>> {
    await this.waitFor(/ status /, timeoutMs);
    await this.waitFor(/ status /, timeoutMs);
    return this.latestStatus()!;
  }

  /** Heap in use after a full GC, in bytes: for a process started with {@link HEAP_PROBE}. */
  async heapUsed(): Promise<number> {
    const reply = this.waitFor(/^heap-used (\d+)$/, 5_000);
    this.child.kill('SIGUSR2');
    return Number((await reply)[1]);
  }

  /** File descriptors the process holds now (Linux). */
  fds(): number {
    return readdirSync(`/proc/${this.child.pid}/fd`).length;
  }

  /** SIGTERM (clean shutdown) or SIGKILL; resolves with the exit code once the process is gone. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}

/** Node flags that let a test ask a CLI for its heap after a full GC (see {@link CliProcess#heapUsed}). */
export const HEAP_PROBE = ['--expose-gc', '--import', `${ROOT}build/tests/fixtures/heap-on-signal.js`];

/**
 * `defaults` (flag and value pairs) with `args` after them, but without the
 * defaults that `args` gives itself: the CLIs refuse a flag given twice.
 */
export function withDefaults(defaults: string[], args: string[]): string[] {
  const own = new Set(args.filter((arg) => arg.startsWith('--')).map((arg) => arg.split('=')[0]));
  return [...defaults.flatMap((arg, i) => (i % 2 === 0 && !own.has(arg) ? [arg, defaults[i + 1]!] : [])), ...args];
}

export async function startRelay(args: string[] = [], nodeArgs: string[] = []): Promise<{ relay: CliProcess; port: number; publicPort: number }> {
  const relay = new CliProcess(RELAY_BIN, withDefaults(['--host', '127.0.0.1', '--public-host', '127.0.0.1', '--port', '0', '--public-port', '0', '--status-interval', '0'], args), nodeArgs);
  const match = await relay.waitFor(/ready port=(\d+) public-port=(\d+)/, 10_000, true);
  return { relay, port: Number(match[1]), publicPort: Number(match[2]) };
}

export async function startAgent(port: number, target: string, args: string[] = [], waitForControl = true, nodeArgs: string[] = []): Promise<CliProcess> {
  const agent = new CliProcess(
    AGENT_BIN,
    withDefaults(['--server', `127.0.0.1:${port}`, '--target', target, '--tls', 'insecure', '--min-interval', '50', '--max-interval', '1000', '--status-interval', '0'], args),
    nodeArgs,
  );
  if (waitForControl) await agent.waitFor(/control connected/, 10_000, true);
  return agent;
}
