import { createHash } from 'node:crypto';
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
