import { createHash, randomBytes } from 'node:crypto';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';

export const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

/** Target services for tunnels: listening on 127.0.0.1, tracked so a test can close them and every socket they accepted. */
export class TargetServers {
  readonly #cleanups: Array<() => void> = [];
  /** Sockets accepted by all targets and still open. */
  readonly openSockets = new Set<Socket>();

  async listen(server: Server): Promise<string> {
    server.on('connection', (socket: Socket) => {
      this.openSockets.add(socket);
      socket.once('close', () => this.openSockets.delete(socket));
    });
    this.#cleanups.push(() => server.close());
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return `127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  closeAll(): void {
    for (const socket of this.openSockets) socket.destroy();
    for (const cleanup of this.#cleanups.splice(0)) cleanup();
  }
}

/** A TCP service that echoes every byte back. */
export function echoServer(): Server {
  return createServer((socket) => {
    socket.on('error', () => {});
    socket.pipe(socket);
  });
}

/**
 * Sends `payload` through an echo tunnel in random-sized writes (1 B to
 * `maxChunk`) and resolves with the SHA-256 of what came back; rejects if the
 * connection closes or errors first.
 */
export function echoThrough(publicPort: number, payload: Buffer, maxChunk = 64 * 1024): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(publicPort, '127.0.0.1');
    const hash = createHash('sha256');
    let received = 0;
    socket.on('error', reject);
    socket.on('close', () => reject(new Error(`closed after ${received} of ${payload.length} bytes`)));
    socket.on('data', (data: Buffer) => {
      hash.update(data);
      received += data.length;
      if (received >= payload.length) {
        socket.removeAllListeners('close');
        socket.destroy();
        resolve(hash.digest('hex'));
      }
    });
    const writeFrom = (offset: number): void => {
      while (offset < payload.length) {
        const size = 1 + Math.floor(Math.random() * maxChunk);
        const ok = socket.write(payload.subarray(offset, offset + size));
        offset += size;
        if (!ok) {
          socket.once('drain', () => writeFrom(offset));
          return;
        }
      }
    };
    writeFrom(0);
  });
}

/** What a {@link scriptedService} answers: 64 KiB. */
export const REPLY = randomBytes(64 * 1024);

/**
 * A service whose behaviour the user picks with the first line it sends:
 * how it answers, and how it closes.
 */
export function scriptedService(): Server {
  return createServer({ allowHalfOpen: true }, (socket) => {
    socket.on('error', () => {});
    let line = '';
    const onData = (data: Buffer): void => {
      line += data.toString('latin1');
      const newline = line.indexOf('\n');
      if (newline < 0) return;
      socket.removeListener('data', onData);
      const mode = line.slice(0, newline);
      switch (mode) {
        case 'reply-then-end': // HTTP/1.0, Connection: close
          socket.end(REPLY);
          socket.resume();
          break;
        case 'reply': // keep-alive service: answers, ends when the user does
          socket.write(REPLY);
          socket.on('end', () => socket.end());
          socket.resume();
          break;
        case 'destroy-before':
          socket.destroy();
          break;
        case 'destroy-after':
          socket.write(REPLY, () => socket.destroy());
          break;
        case 'read-to-eof': // answers only once the request has ended (nc -N users)
          socket.on('end', () => socket.end(REPLY));
          socket.resume();
          break;
        default:
          socket.destroy();
      }
    };
    socket.on('data', onData);
  });
}

export type UserMode = 'end-after-reply' | 'destroy-before-reply' | 'destroy-after-reply' | 'half-close-then-read' | 'read-to-eof';

/**
 * One user of a {@link scriptedService}, through a tunnel or directly: asks
 * for `targetMode`, behaves as `mode` says, and resolves with the reply bytes
 * it read once its socket has closed.
 */
export function scriptedUser(publicPort: number, targetMode: string, mode: UserMode): Promise<number> {
  return new Promise((resolve) => {
    const socket = connect({ port: publicPort, host: '127.0.0.1', allowHalfOpen: true });
    let received = 0;
    socket.on('error', () => {});
    socket.once('close', () => resolve(received));
    socket.on('data', (data: Buffer) => {
      received += data.length;
      if (received >= REPLY.length && mode === 'end-after-reply') socket.end();
      if (received >= REPLY.length && mode === 'destroy-after-reply') socket.destroy();
    });
    socket.on('end', () => socket.end());
    socket.once('connect', () => {
      if (mode === 'half-close-then-read') {
        socket.end(`${targetMode}\n`);
      } else {
        socket.write(`${targetMode}\n`);
        if (mode === 'destroy-before-reply') setTimeout(() => socket.destroy(), 5);
      }
    });
  });
}
