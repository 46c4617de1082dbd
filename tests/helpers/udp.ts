import { createSocket, type Socket } from 'node:dgram';
import { once } from 'node:events';

/** A UDP socket bound to an ephemeral port on 127.0.0.1; the caller closes it. */
export async function boundUdpSocket(): Promise<Socket> {
  const socket = createSocket('udp4');
  socket.bind(0, '127.0.0.1');
  await once(socket, 'listening');
  return socket;
}
