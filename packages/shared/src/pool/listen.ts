import type { Server } from 'node:net';

/** `server.listen` as a promise that rejects with the listen error (EADDRINUSE, …). `backlog` as for `listen()`. */
export function listen(server: Server, port: number, host: string | undefined, backlog?: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port, host, backlog }, () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
}
