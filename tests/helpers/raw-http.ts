import { connect } from 'node:net';
import WebSocket from 'ws';
import { receiveId, type Extensions, type PoolConn } from '@pool/shared';

export interface RawResponse {
  status: number;
  headers: string;
  body: string;
}

/**
 * Sends a WebSocket upgrade request over a bare TCP socket and returns the
 * first response, so a test sees exactly what the server wrote.
 */
export function rawUpgrade(
  port: number,
  options: { host?: string; path?: string; headers?: Record<string, string>; method?: string; upgrade?: boolean } = {},
): Promise<RawResponse> {
  const { host = '127.0.0.1', path = '/', headers = {}, method = 'GET', upgrade = true } = options;
  const lines = [`${method} ${path} HTTP/1.1`, `Host: ${host}:${port}`];
  if (upgrade) {
    lines.push('Upgrade: websocket', 'Connection: Upgrade', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Version: 13');
  }
  for (const [name, value] of Object.entries(headers)) lines.push(`${name}: ${value}`);
  return new Promise((resolve, reject) => {
    const socket = connect(port, host);
    let received = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no complete response within 5 s; got ${JSON.stringify(received)}`));
    }, 5_000);
    socket.on('error', reject);
    socket.setEncoding('latin1');
    socket.write(`${lines.join('\r\n')}\r\n\r\n`);
    socket.on('data', (chunk: string) => {
      received += chunk;
      const headerEnd = received.indexOf('\r\n\r\n');
      if (headerEnd === -1) return;
      const headerText = received.slice(0, headerEnd);
      const length = /content-length: (\d+)/i.exec(headerText);
      const body = received.slice(headerEnd + 4);
      const status = Number(headerText.split(' ')[1]);
      if (status === 101 || (length && body.length >= Number(length[1]))) {
        clearTimeout(timer);
        socket.destroy();
        resolve({ status, headers: headerText, body });
      }
    });
  });
}

/** Opens a pool connection the way an agent does (optionally offering keep-alive) and reads its ID. */
export function dialPool(
  url: string,
  options: { headers?: Record<string, string>; autoPong?: boolean; family?: number; extensions?: Extensions } = {},
): Promise<PoolConn> {
  const ws = new WebSocket(url, {
    perMessageDeflate: false,
    rejectUnauthorized: false,
    headers: options.headers,
    autoPong: options.autoPong ?? true,
    family: options.family,
  });
  return receiveId(ws, 5_000, { extensions: options.extensions });
}
